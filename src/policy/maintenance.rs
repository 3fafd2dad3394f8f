//! A route taken down for maintenance: every request gets 503 with the operator's message
//! and `Retry-After`, before any other policy runs, except clients in `ip_allow` (the team
//! checking the work), which go through as usual.

use super::ip_filter::IpFilter;
use super::pipeline::{Build, Decision, Exchange, Respond, RoutePolicy};

pub struct Maintenance {
    message: String,
    /// Seconds, pre-rendered for `Retry-After`.
    retry_after: Option<String>,
    /// Clients that still get through.
    allow: Option<IpFilter>,
}

impl Maintenance {
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let m = b.route.maintenance.as_ref()?;
        if m.retry_after.is_some_and(|d| d.0.is_zero()) {
            b.fault("maintenance.retry_after", "must be longer than 0s");
        }
        let allow = IpFilter::compile(&m.ip_allow, &[])
            .map_err(|e| b.fault_in("maintenance", e))
            .ok()?;
        Some(Maintenance {
            message: m.message.clone(),
            retry_after: m.retry_after.map(|d| d.ceil_secs().to_string()),
            allow,
        })
    }
}

impl RoutePolicy for Maintenance {
    const NAME: &'static str = "maintenance";

    fn describe(&self) -> String {
        format!("answers 503 ({:?})", self.message)
    }

    async fn request(&self, x: &mut Exchange<'_>) -> Decision {
        if self
            .allow
            .as_ref()
            .is_some_and(|a| a.admits(x.state.effective_ip))
        {
            return Decision::Continue;
        }
        let mut r = Respond::new(503, "maintenance", self.message.clone());
        if let Some(secs) = &self.retry_after {
            r = r.header("retry-after", secs.as_str());
        }
        Decision::Respond(r)
    }
}
