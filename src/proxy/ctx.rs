//! The state of one request, in named parts: the config and route it decides on, what the
//! policies share, the upstream attempts, the cache's view, and when each phase happened.

use crate::cache;
use crate::canonical::Refusal;
use crate::observe::request_id::RequestId;
use crate::observe::trace::TraceContext;
use crate::policy::pipeline::{Exchange, PolicyState};
use crate::route::RouteAction;
use crate::runtime::Runtime;
use crate::upstream::limit::Slot;
use crate::upstream::outlier::InFlight;
use crate::upstream::{Pool, Probe};
use http::HeaderValue;
use pingora_proxy::Session;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Ctx {
    /// The config and the route the request decides on.
    pub config: RequestConfig,
    pub request_id: RequestId,
    pub trace: Option<TraceContext>,
    /// The request has no canonical form: answered with this before anything else.
    pub refusal: Option<Refusal>,
    /// `Strict-Transport-Security` for the response (HTTPS listeners that set one).
    pub hsts: Option<HeaderValue>,
    pub policy: PolicyState,
    pub attempt: Attempt,
    pub cache: cache::RequestState,
    pub times: Timings,
}

/// The config this request started with (it finishes on it even across a reload) and the
/// route it took. A part of its own, so that looking up the route leaves the rest of the
/// request's state free to change.
pub struct RequestConfig {
    rt: Arc<Runtime>,
    /// Index of the route the request took, in `rt.routes`.
    route: Option<usize>,
}

impl RequestConfig {
    pub fn rt(&self) -> &Runtime {
        &self.rt
    }

    pub fn set_route(&mut self, index: usize) {
        self.route = Some(index);
    }

    /// The route the request took.
    pub fn route(&self) -> Option<&RouteAction> {
        self.rt.routes.get(self.route?)
    }

    /// The route's cache settings.
    pub fn cache_policy(&self) -> Option<&cache::RoutePolicy> {
        self.route()?.cache.as_ref()
    }

    /// The upstream of the request: `split` (the one a traffic split chose), else its
    /// route's.
    pub fn pool(&self, split: Option<usize>) -> Option<&Arc<Pool>> {
        self.rt
            .upstreams
            .get(split.or_else(|| self.route()?.upstream())?)
    }
}

/// The request's attempts at its upstream.
#[derive(Default)]
pub struct Attempt {
    /// Attempts started at the upstream.
    pub count: u32,
    /// The target of the current attempt.
    pub target: Option<SocketAddr>,
    /// Targets of failed attempts, tried again only when no other target is left.
    pub failed: Vec<SocketAddr>,
    /// Wait before the next attempt (a retry's back-off).
    pub backoff: Duration,
    /// When the route's `timeout` runs out.
    pub deadline: Option<Instant>,
    /// Seconds until an open breaker lets probes through, for `Retry-After`.
    pub breaker_retry_after: u64,
    /// The upstream's response header came and was no failure: the attempt succeeds
    /// unless its body breaks off.
    pub answered: bool,
    /// The Host of the current attempt's target.
    pub upstream_host: Option<HeaderValue>,
    /// Set while this request is a half-open breaker's probe.
    pub probe: Option<Probe>,
    /// This request, in flight to its target (for `least_request`).
    pub active: Option<InFlight>,
    /// The request's slots in its route's and its upstream's `max_concurrent`, freed when
    /// the request ends.
    pub route_slot: Option<Slot>,
    pub upstream_slot: Option<Slot>,
}

/// When the phases of a request happened, for the access log.
pub struct Timings {
    pub start: Instant,
    pub connect_start: Option<Instant>,
    pub connected: Option<Instant>,
    pub response: Option<Instant>,
}

/// What the upstream attempts of a request work with, borrowed at once.
pub struct Parts<'a> {
    pub route: &'a RouteAction,
    pub pool: &'a Arc<Pool>,
    pub attempt: &'a mut Attempt,
    pub times: &'a mut Timings,
    pub request_id: &'a RequestId,
    pub client_ip: Option<IpAddr>,
}

impl Ctx {
    pub fn new(rt: Arc<Runtime>) -> Ctx {
        Ctx {
            config: RequestConfig { rt, route: None },
            request_id: RequestId::unset(),
            trace: None,
            refusal: None,
            hsts: None,
            policy: PolicyState::default(),
            attempt: Attempt::default(),
            cache: cache::RequestState::default(),
            times: Timings {
                start: Instant::now(),
                connect_start: None,
                connected: None,
                response: None,
            },
        }
    }

    pub fn rt(&self) -> &Runtime {
        self.config.rt()
    }

    pub fn route(&self) -> Option<&RouteAction> {
        self.config.route()
    }

    pub fn pool(&self) -> Option<&Arc<Pool>> {
        self.config.pool(self.policy.upstream)
    }

    /// The route and the request as its policies see it.
    pub fn exchange<'a>(
        &'a mut self,
        session: &'a mut Session,
    ) -> Option<(&'a RouteAction, Exchange<'a>)> {
        let route = self.config.route()?;
        let x = Exchange {
            session,
            route: &route.name,
            metrics: &route.metrics,
            request_id: &self.request_id,
            state: &mut self.policy,
        };
        Some((route, x))
    }

    /// The route, its upstream and the attempt state; `None` before a route is chosen or
    /// for a composition.
    pub fn parts(&mut self) -> Option<Parts<'_>> {
        let route = self.config.route()?;
        let pool = self.config.pool(self.policy.upstream)?;
        Some(Parts {
            route,
            pool,
            attempt: &mut self.attempt,
            times: &mut self.times,
            request_id: &self.request_id,
            client_ip: self.policy.client_ip,
        })
    }
}
