//! Upstream pools: a pingora `LoadBalancer` per upstream, with its peers prepared at load.

pub mod hash_key;
pub mod health;
pub mod mirror;
pub mod split;

use crate::observe::metrics::UpstreamMetrics;
use futures::FutureExt;
use hash_key::HashKey;
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Hash-based pools look this far along their ring for a usable target.
const MAX_SELECT_STEPS: usize = 256;

pub enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

/// One resolved target of a pool.
pub struct TargetSpec {
    pub addr: SocketAddr,
    pub weight: usize,
    /// The address as written in the config, sent as Host unless a route says otherwise.
    pub host: HeaderValue,
}

pub struct PoolOptions {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive: bool,
    pub retries: usize,
    pub max_concurrent: Option<usize>,
}

pub struct Pool {
    pub name: String,
    balancer: Balancer,
    pub hash_key: Option<HashKey>,
    /// Prepared peer and Host value per target; cloned per request, never built.
    peers: HashMap<SocketAddr, (HttpPeer, HeaderValue)>,
    pub keepalive: bool,
    pub retries: usize,
    pub check_interval: Option<Duration>,
    max_concurrent: Option<usize>,
    in_flight: AtomicUsize,
    pub metrics: UpstreamMetrics,
    /// The upstream's section as configured: a reload that leaves it unchanged keeps this
    /// pool, with its targets' health and its check task.
    pub source: String,
}

/// Every `max_concurrent` slot of a pool is taken.
#[derive(Debug)]
pub struct AtCapacity;

/// One admitted request of a pool with `max_concurrent`; frees its slot when dropped.
pub struct InFlight {
    pool: Arc<Pool>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A target as `/status` and the metrics show it.
pub struct TargetState {
    pub addr: SocketAddr,
    pub weight: usize,
    pub healthy: bool,
}

fn build_lb<S>(
    backends: BTreeSet<Backend>,
    check: Option<Box<dyn HealthCheck + Send + Sync>>,
) -> LoadBalancer<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Static::new(backends)));
    if let Some(check) = check {
        lb.set_health_check(check);
    }
    // Static discovery answers at once; this only publishes the targets to the selector.
    if let Some(Err(e)) = lb.update().now_or_never() {
        log::error!("static upstream discovery failed: {e}");
    }
    lb
}

impl Pool {
    pub fn new(
        name: &str,
        targets: Vec<TargetSpec>,
        algorithm: crate::config::Algorithm,
        hash_key: Option<HashKey>,
        check: Option<(Box<dyn HealthCheck + Send + Sync>, Duration)>,
        opts: &PoolOptions,
    ) -> Pool {
        let mut peers = HashMap::with_capacity(targets.len());
        let mut backends = BTreeSet::new();
        for t in targets {
            backends.insert(Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(t.addr),
                weight: t.weight,
                ext: http::Extensions::new(),
            });
            let mut peer = HttpPeer::new(t.addr, false, String::new());
            peer.options.connection_timeout = Some(opts.connect_timeout);
            peer.options.read_timeout = Some(opts.read_timeout);
            peer.options.write_timeout = Some(opts.write_timeout);
            peer.options.idle_timeout = Some(opts.idle_timeout);
            peers.insert(t.addr, (peer, t.host));
        }
        let (check, interval) = match check {
            Some((c, i)) => (Some(c), Some(i)),
            None => (None, None),
        };
        use crate::config::Algorithm::*;
        let balancer = match algorithm {
            RoundRobin => Balancer::RoundRobin(build_lb(backends, check)),
            Random => Balancer::Random(build_lb(backends, check)),
            ConsistentHash => Balancer::Consistent(build_lb(backends, check)),
        };
        Pool {
            name: name.to_string(),
            balancer,
            hash_key,
            peers,
            keepalive: opts.keepalive,
            retries: opts.retries,
            check_interval: interval,
            max_concurrent: opts.max_concurrent,
            in_flight: AtomicUsize::new(0),
            metrics: UpstreamMetrics::new(name),
            source: String::new(),
        }
    }

    /// A healthy target not in `exclude`, chosen by the pool's algorithm.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let accept = |b: &Backend, healthy: bool| {
            healthy && b.addr.as_inet().is_some_and(|a| !exclude.contains(a))
        };
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
        }?;
        backend.addr.as_inet().copied()
    }

    /// The prepared peer for a selected target, and the Host value for it.
    pub fn peer(&self, addr: &SocketAddr) -> Option<(Box<HttpPeer>, &HeaderValue)> {
        self.peers
            .get(addr)
            .map(|(peer, host)| (Box::new(peer.clone()), host))
    }

    /// A slot among the pool's `max_concurrent`, held until the request ends: `Ok(None)`
    /// when the pool has no limit, `Err` when every slot is taken.
    pub fn admit(self: &Arc<Pool>) -> Result<Option<InFlight>, AtCapacity> {
        let Some(max) = self.max_concurrent else {
            return Ok(None);
        };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(AtCapacity);
        }
        Ok(Some(InFlight { pool: self.clone() }))
    }

    /// Every target with its weight and current health (always healthy without checks).
    pub fn targets(&self) -> Vec<TargetState> {
        fn states(b: &Backends) -> Vec<TargetState> {
            b.get_backend()
                .iter()
                .filter_map(|t| {
                    Some(TargetState {
                        addr: *t.addr.as_inet()?,
                        weight: t.weight,
                        healthy: b.ready(t),
                    })
                })
                .collect()
        }
        match &self.balancer {
            Balancer::RoundRobin(lb) => states(lb.backends()),
            Balancer::Random(lb) => states(lb.backends()),
            Balancer::Consistent(lb) => states(lb.backends()),
        }
    }

    /// One pass of active checks over every target, all at once.
    pub async fn run_health_check(&self) {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().run_health_check(true).await,
            Balancer::Random(lb) => lb.backends().run_health_check(true).await,
            Balancer::Consistent(lb) => lb.backends().run_health_check(true).await,
        }
    }
}
