//! Allow and deny lists of client addresses (CIDRs), checked on the client address as
//! trusted proxies report it.

use super::pipeline::{Build, Decision, Exchange, Respond, RoutePolicy};
use ipnet::IpNet;
use std::net::IpAddr;

pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

fn parse(list: &[String], field: &str) -> Result<Vec<IpNet>, (String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    (
                        format!("{field}[{i}]"),
                        format!("{s:?} is not an address or CIDR"),
                    )
                })
        })
        .collect()
}

impl IpFilter {
    /// `ip_allow` / `ip_deny` of a route; `None` when it has neither.
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let r = b.route;
        match IpFilter::compile(&r.ip_allow, &r.ip_deny) {
            Ok(f) => f,
            Err((field, message)) => {
                b.fault(field, message);
                None
            }
        }
    }

    pub fn compile(allow: &[String], deny: &[String]) -> Result<Option<Self>, (String, String)> {
        let f = IpFilter {
            allow: parse(allow, "ip_allow")?,
            deny: parse(deny, "ip_deny")?,
        };
        Ok((!f.allow.is_empty() || !f.deny.is_empty()).then_some(f))
    }

    /// Deny wins over allow; with an allow list, everything else is refused. An unknown
    /// address (no peer address) is refused whenever a list applies.
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

impl RoutePolicy for IpFilter {
    const NAME: &'static str = "ip_filter";

    fn describe(&self) -> String {
        let list = |l: &[IpNet]| {
            l.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.allow.is_empty(), self.deny.is_empty()) {
            (false, true) => format!("client address in: {}", list(&self.allow)),
            (true, false) => format!("client address not in: {}", list(&self.deny)),
            _ => format!(
                "client address in: {}; not in: {}",
                list(&self.allow),
                list(&self.deny)
            ),
        }
    }

    async fn request(&self, x: &mut Exchange<'_>) -> Decision {
        if self.admits(x.state.effective_ip) {
            return Decision::Continue;
        }
        let r = Respond::new(403, "address", "your address may not call this route");
        Decision::Respond(r)
    }
}
