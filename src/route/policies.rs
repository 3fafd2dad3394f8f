//! The policies a route can have, in the order they run in every phase. Adding a policy
//! is one file that implements [`RoutePolicy`] and one line in this list.

use crate::compose::LocalResponse;
use crate::policy::access::AccessRule;
use crate::policy::body_limit::BodyLimit;
use crate::policy::compression::Compression;
use crate::policy::contract::RequestValidation;
use crate::policy::cors::Cors;
use crate::policy::ip_filter::IpFilter;
use crate::policy::maintenance::Maintenance;
use crate::policy::mirror::Mirror;
use crate::policy::pipeline::{answer, Build, Decision, Exchange, RoutePolicy};
use crate::policy::ratelimit::RateLimits;
use crate::policy::split::Split;
use crate::transform::RouteTransforms;
use bytes::Bytes;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

/// Generates the closed enum of policies (static dispatch: no boxed futures per request),
/// its compiler and one loop per phase, from the list of policy types.
macro_rules! route_policies {
    ($($kind:ident),* $(,)?) => {
        /// One compiled policy of a route (boxed: sizes differ widely, and the list is
        /// walked, not moved).
        pub enum Policy {
            $($kind(Box<$kind>),)*
        }

        impl Policy {
            pub fn name(&self) -> &'static str {
                match self {
                    $(Policy::$kind(_) => <$kind as RoutePolicy>::NAME,)*
                }
            }

            pub fn describe(&self) -> String {
                match self {
                    $(Policy::$kind(p) => p.describe(),)*
                }
            }
        }

        impl Pipeline {
            /// Each policy in the order it runs, with what it needs of a request.
            pub fn describe(&self) -> Vec<(&'static str, String)> {
                self.list.iter().map(|p| (p.name(), p.describe())).collect()
            }

            /// Compile every policy the route's config asks for, in list order.
            pub fn from_config(b: &mut Build<'_>) -> Pipeline {
                let mut list = Vec::new();
                $(
                    if let Some(p) = $kind::from_config(b) {
                        list.push(Policy::$kind(Box::new(p)));
                    }
                )*
                Pipeline { list }
            }

            /// Run the request phase until a policy answers; `true` when one did (the
            /// answer is sent).
            pub async fn request(&self, x: &mut Exchange<'_>) -> Result<bool> {
                for p in &self.list {
                    // Timed only for a traced request.
                    let started = x.state.trace.is_some().then(std::time::Instant::now);
                    let decision = match p {
                        $(Policy::$kind(p) => p.request(x).await,)*
                    };
                    if let (Some(t), Some(rec)) = (started, x.state.trace.as_deref_mut()) {
                        let outcome = match &decision {
                            Decision::Continue => "continue",
                            Decision::Respond(r) => r.reason,
                        };
                        rec.policy(p.name(), t, outcome);
                    }
                    if let Decision::Respond(r) = decision {
                        Box::pin(answer(x, p.name(), r)).await?;
                        return Ok(true);
                    }
                }
                Ok(false)
            }

            pub fn request_body(&self, x: &mut Exchange<'_>, body: &mut Option<Bytes>, end: bool) -> Result<()> {
                for p in &self.list {
                    match p {
                        $(Policy::$kind(p) => p.request_body(x, body, end)?,)*
                    }
                }
                Ok(())
            }

            pub fn upstream_request(&self, x: &mut Exchange<'_>, upstream: &mut RequestHeader) -> Result<()> {
                for p in &self.list {
                    match p {
                        $(Policy::$kind(p) => p.upstream_request(x, upstream)?,)*
                    }
                }
                Ok(())
            }

            pub fn response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
                for p in &self.list {
                    match p {
                        $(Policy::$kind(p) => p.response(x, resp)?,)*
                    }
                }
                Ok(())
            }

        }

        impl LocalResponse for Pipeline {
            fn local_response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
                for p in &self.list {
                    match p {
                        $(Policy::$kind(p) => p.local_response(x, resp)?,)*
                    }
                }
                Ok(())
            }
        }

        impl Pipeline {
            pub fn response_body(&self, x: &mut Exchange<'_>, body: &mut Option<Bytes>, end: bool) -> Result<()> {
                for p in &self.list {
                    match p {
                        $(Policy::$kind(p) => p.response_body(x, body, end)?,)*
                    }
                }
                Ok(())
            }
        }
    };
}

route_policies![
    Maintenance,
    IpFilter,
    BodyLimit,
    AccessRule,
    RateLimits,
    RequestValidation,
    Split,
    Compression,
    RouteTransforms,
    Mirror,
    Cors,
];

/// A route's compiled policies, in the order of the list above.
#[derive(Default)]
pub struct Pipeline {
    list: Vec<Policy>,
}

impl Pipeline {
    /// The route's CORS policy, for preflights (answered before the pipeline runs).
    pub fn cors(&self) -> Option<&Cors> {
        self.list.iter().find_map(|p| match p {
            Policy::Cors(c) => Some(&**c),
            _ => None,
        })
    }
}
