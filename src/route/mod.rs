//! A route as the request path uses it: where it goes, how the request is rewritten, its
//! policy pipeline, and the resilience settings of its attempts. Compiled in `build.rs`.

mod build;
pub mod listing;
pub mod openapi;
mod operation;
pub mod policies;
pub mod rewrite;

use crate::cache::RoutePolicy as CachePolicy;
use crate::compose::Compose;
use crate::observe::metrics::RouteMetrics;
use crate::upstream::limit::ConcurrencyLimit;
use crate::upstream::retry::RetryPolicy;
use http::HeaderValue;
use policies::Pipeline;
use rewrite::Rewrite;
use std::sync::Arc;
use std::time::Duration;

/// Where a route's requests are answered.
pub enum RouteTarget {
    /// Proxied to this upstream (an index into the runtime's pools), unless a split
    /// chooses another.
    Upstream(usize),
    /// Answered by the gateway from several upstream calls.
    Compose(Compose),
}

/// Which Host header the upstream sees.
#[derive(Debug)]
pub enum HostPolicy {
    /// The target address as written in the config.
    Target,
    /// The client's own Host header.
    Client,
    Fixed(HeaderValue),
}

pub struct RouteAction {
    pub name: String,
    pub metrics: RouteMetrics,
    pub target: RouteTarget,
    pub rewrite: Rewrite,
    pub host: HostPolicy,
    /// The route's policies, run in order in each phase.
    pub policies: Pipeline,
    /// The response cache's settings for this route (its phases are Pingora's cache
    /// callbacks, not pipeline phases).
    pub cache: Option<CachePolicy>,
    /// The route's retries; without it, the upstream's connect-only default.
    pub retry: Option<RetryPolicy>,
    /// The whole request must be answered within this.
    pub deadline: Option<Duration>,
    pub limit: Option<Arc<ConcurrencyLimit>>,
    /// Status and JSON body answered instead of a 503 when the upstream is not tried.
    pub fallback: Option<(u16, bytes::Bytes)>,
    /// Plain HTTP requests are redirected to HTTPS.
    pub redirect_https: bool,
    /// Idle limit of an upgraded connection (WebSocket), each way.
    pub upgrade_idle: Duration,
}

impl RouteAction {
    /// The upstream the route proxies to; `None` for a composition.
    pub fn upstream(&self) -> Option<usize> {
        match self.target {
            RouteTarget::Upstream(i) => Some(i),
            RouteTarget::Compose(_) => None,
        }
    }
}
