//! Allow and deny lists of client addresses (CIDRs), checked on the client address as
//! trusted proxies report it.

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
