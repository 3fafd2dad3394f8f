//! Upstream pools: a pingora `LoadBalancer` per upstream, with its peers prepared at load.

pub mod breaker;
mod build;
pub mod failure;
pub mod hash_key;
pub mod health;
pub mod limit;
pub mod outlier;
pub mod retry;
pub mod window;

use crate::clock;
use crate::observe::metrics::UpstreamMetrics;
use breaker::{Admission, Breaker, BreakerPolicy};
pub use build::Source;
use failure::Failure;
use futures::FutureExt;
use hash_key::HashKey;
use http::HeaderValue;
use limit::{ConcurrencyLimit, Slot};
use outlier::{Ejection, InFlight, Outlier, OutlierPolicy, TargetRecord};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use retry::{RetryBudget, RetryPolicy};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Hash-based pools look this far along their ring for a usable target.
const MAX_SELECT_STEPS: usize = 256;

pub enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
    /// Draws candidates by weight at random, then compares their requests in flight.
    LeastRequest(LoadBalancer<Random>),
}

impl Balancer {
    /// The targets with their health.
    fn backends(&self) -> &Backends {
        match self {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) | Balancer::LeastRequest(lb) => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }
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
    pub outlier: Option<OutlierPolicy>,
    pub breaker: Option<BreakerPolicy>,
    /// Retry budget: percent of requests, and retries per second always allowed.
    pub budget: (u32, u32),
    pub tls: Option<TlsOptions>,
    /// HTTP/2 to the targets (ALPN over TLS, prior knowledge without).
    pub http2: bool,
    pub max_h2_streams: usize,
    /// Metrics are recorded (an admin listener serves them).
    pub metrics: bool,
}

/// TLS to an upstream's targets.
#[derive(Clone)]
pub struct TlsOptions {
    /// Sent and verified; each target's host as written when unset.
    pub sni: Option<String>,
    /// Authorities to trust; the system's when unset.
    pub ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    pub verify: bool,
    pub client_cert: Option<Arc<pingora_core::utils::tls::CertKey>>,
}

impl TlsOptions {
    /// Separates the kept-alive connections of upstreams that trust differently.
    pub fn trust_key(&self, upstream: &str) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
        upstream.hash(&mut h);
        for ca in self.ca.iter().flat_map(|c| c.iter()) {
            ca.borrow_raw_cert().hash(&mut h);
        }
        h.finish()
    }

    /// Make `peer` connect over TLS as configured, naming `host` unless `sni` is set.
    pub fn apply(&self, peer: &mut HttpPeer, host: &str) {
        peer.scheme = pingora_core::upstreams::peer::Scheme::HTTPS;
        peer.sni = self.sni.clone().unwrap_or_else(|| host.to_string());
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client_cert.clone();
    }
}

/// "Power of two choices": of the first two acceptable targets the weighted random order
/// offers, the one with fewer requests in flight (the first on a tie); the only one when
/// just one is acceptable.
fn least_of_two(
    lb: &LoadBalancer<Random>,
    key: &[u8],
    accept: impl Fn(&Backend, bool) -> bool,
) -> Option<SocketAddr> {
    let load = |b: &Backend| {
        b.ext
            .get::<Arc<TargetRecord>>()
            .map_or(0, |r| r.in_flight())
    };
    let first: std::cell::Cell<Option<(SocketAddr, usize)>> = std::cell::Cell::new(None);
    let chosen = std::cell::Cell::new(None);
    lb.select_with(key, MAX_SELECT_STEPS, |b, healthy| {
        let Some(addr) = b.addr.as_inet().copied() else {
            return false;
        };
        if !accept(b, healthy) {
            return false;
        }
        match first.get() {
            None => {
                first.set(Some((addr, load(b))));
                false
            }
            Some((a, l)) => {
                chosen.set(Some(if load(b) < l { addr } else { a }));
                true
            }
        }
    });
    chosen.get().or(first.get().map(|(a, _)| a))
}

/// Speak HTTP/2 to `peer`: over TLS ALPN offers h2 and h1, in the clear the target must
/// speak h2 (prior knowledge).
pub fn use_http2(peer: &mut HttpPeer, max_streams: usize) {
    let min = if peer.is_tls() { 1 } else { 2 };
    peer.options.set_http_version(2, min);
    peer.options.max_h2_streams = max_streams.max(1);
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
pub fn host_only(address: &str) -> &str {
    let host = match address.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => address,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A target's prepared peer, the Host value for it, and its record of real requests.
struct Target {
    peer: HttpPeer,
    host: HeaderValue,
    record: Arc<TargetRecord>,
}

pub struct Pool {
    pub name: String,
    balancer: Balancer,
    pub hash_key: Option<HashKey>,
    /// Every target, prepared at load: the peer is cloned per request, never built.
    peers: HashMap<SocketAddr, Target>,
    pub keepalive: bool,
    pub check_interval: Option<Duration>,
    pub limit: Option<Arc<ConcurrencyLimit>>,
    pub outlier: Option<Outlier>,
    pub breaker: Option<Breaker>,
    pub budget: RetryBudget,
    /// Retries of routes that set none: failed connects, up to the upstream's `retries`.
    pub default_retry: RetryPolicy,
    pub metrics: UpstreamMetrics,
    /// What the pool was built from: a reload that leaves it unchanged keeps this pool,
    /// with its targets' health and its check task.
    pub source: Option<Source>,
}

/// Every `max_concurrent` slot of a pool is taken.
#[derive(Debug)]
pub struct AtCapacity;

/// A target as `/status` and the metrics show it.
pub struct TargetState {
    pub addr: SocketAddr,
    pub weight: usize,
    /// As the active checks see it.
    pub healthy: bool,
    /// Milliseconds left of its ejection by outlier detection.
    pub ejected_ms: u64,
    pub ejections: u64,
    /// Requests in flight (counted for `least_request` pools only).
    pub in_flight: usize,
}

/// A half-open breaker's probe: its outcome closes or reopens the breaker; dropped without
/// one (the client left), it makes room for another probe.
pub struct Probe {
    /// Taken once the outcome is recorded.
    pool: Option<Arc<Pool>>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(b) = self.pool.take().as_ref().and_then(|p| p.breaker.as_ref()) {
            b.release_probe();
        }
    }
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
        mut opts: PoolOptions,
    ) -> Pool {
        let mut peers = HashMap::with_capacity(targets.len());
        let mut backends = BTreeSet::new();
        let mut records = Vec::with_capacity(targets.len());
        for t in targets {
            let record = Arc::new(TargetRecord::default());
            records.push(record.clone());
            // The selector sees each target's record, to pass over ejected ones.
            let mut ext = http::Extensions::new();
            ext.insert(record.clone());
            backends.insert(Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(t.addr),
                weight: t.weight,
                ext,
            });
            let mut peer = HttpPeer::new(t.addr, false, String::new());
            if let Some(tls) = &opts.tls {
                tls.apply(&mut peer, host_only(t.host.to_str().unwrap_or_default()));
                // Pingora reuses a kept-alive connection for any peer with the same address,
                // SNI and verify flags — not the same trusted CAs. One upstream's connections
                // must not serve another that trusts different authorities.
                peer.group_key = tls.trust_key(name);
            }
            if opts.http2 {
                use_http2(&mut peer, opts.max_h2_streams);
            }
            peer.options.connection_timeout = Some(opts.connect_timeout);
            peer.options.read_timeout = Some(opts.read_timeout);
            peer.options.write_timeout = Some(opts.write_timeout);
            peer.options.idle_timeout = Some(opts.idle_timeout);
            peers.insert(
                t.addr,
                Target {
                    peer,
                    host: t.host,
                    record,
                },
            );
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
            LeastRequest => Balancer::LeastRequest(build_lb(backends, check)),
        };
        Pool {
            name: name.to_string(),
            balancer,
            hash_key,
            peers,
            keepalive: opts.keepalive,
            check_interval: interval,
            limit: opts.max_concurrent.map(ConcurrencyLimit::new),
            outlier: opts
                .outlier
                .take()
                .map(|policy| Outlier::new(policy, records)),
            breaker: opts.breaker.take().map(|p| Breaker::new(p, name)),
            budget: RetryBudget::new(opts.budget.0, opts.budget.1),
            default_retry: RetryPolicy::upstream_default(opts.retries),
            metrics: UpstreamMetrics::new(name, opts.metrics),
            source: None,
        }
    }

    /// A healthy target not in `exclude`, chosen by the pool's algorithm.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let now = if self.outlier.is_some() {
            clock::now_ms()
        } else {
            0
        };
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && b.addr.as_inet().is_some_and(|a| !exclude.contains(a))
                && (now == 0
                    || b.ext
                        .get::<Arc<TargetRecord>>()
                        .is_none_or(|r| !r.ejected(now)))
        };
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Balancer::LeastRequest(lb) => return least_of_two(lb, key, accept),
        }?;
        backend.addr.as_inet().copied()
    }

    /// Whether requests in flight are counted per target (`least_request`).
    pub fn counts_in_flight(&self) -> bool {
        matches!(self.balancer, Balancer::LeastRequest(_))
    }

    /// Count a request in flight to `addr`, for `least_request` pools.
    pub fn track(&self, addr: &SocketAddr) -> Option<InFlight> {
        if !self.counts_in_flight() {
            return None;
        }
        self.peers.get(addr).map(|t| t.record.start())
    }

    /// The prepared peer for a selected target, and the Host value for it.
    pub fn peer(&self, addr: &SocketAddr) -> Option<(Box<HttpPeer>, &HeaderValue)> {
        self.peers
            .get(addr)
            .map(|t| (Box::new(t.peer.clone()), &t.host))
    }

    /// A slot among the pool's `max_concurrent`, held until the request ends: `Ok(None)`
    /// when the pool has no limit, `Err` when every slot is taken.
    pub fn admit(&self) -> Result<Option<Slot>, AtCapacity> {
        match &self.limit {
            None => Ok(None),
            Some(l) => l.acquire().map(Some).ok_or(AtCapacity),
        }
    }

    /// Whether the breaker lets an attempt through: `Ok(Some)` for a half-open breaker's
    /// probe, `Err(ms)` with the time until it lets probes through.
    pub fn breaker_admit(self: &Arc<Pool>, first: bool) -> Result<Option<Probe>, u64> {
        let Some(b) = &self.breaker else {
            return Ok(None);
        };
        match b.admit(clock::now_ms()) {
            Admission::Pass => Ok(None),
            // Retries do not probe: one request's outcome per probe.
            Admission::Probe if first => Ok(Some(Probe {
                pool: Some(self.clone()),
            })),
            Admission::Probe => {
                b.release_probe();
                Err(1000)
            }
            Admission::Refused(ms) => Err(ms),
        }
    }

    /// Count one attempt's outcome for outlier detection and the breaker.
    pub fn record(
        &self,
        target: Option<SocketAddr>,
        outcome: Result<(), Failure>,
        probe: Option<Probe>,
    ) {
        if self.outlier.is_none() && self.breaker.is_none() {
            return;
        }
        let now = clock::now_ms();
        if let (Some(o), Some(addr)) = (&self.outlier, target) {
            if let Some(t) = self.peers.get(&addr) {
                match o.record(&t.record, outcome, now) {
                    Ejection::Ejected(ms) => {
                        self.metrics.ejections.inc();
                        log::warn!(
                            "upstream {:?}: target {addr} ejected for {ms} ms after {} failures in a row",
                            self.name,
                            o.policy.consecutive
                        );
                    }
                    Ejection::Spared => log::warn!(
                        "upstream {:?}: target {addr} keeps failing, but the pool already has its maximum share of targets ejected",
                        self.name
                    ),
                    Ejection::Kept => {}
                }
            }
        }
        // Recorded here, so the probe is not released as lost when dropped.
        let probe = probe.and_then(|mut p| p.pool.take()).is_some();
        if let Some(b) = &self.breaker {
            if b.record(outcome, probe, now) {
                self.metrics.breaker_opened.inc();
                log::warn!(
                    "upstream {:?}: circuit breaker open for {} ms",
                    self.name,
                    b.policy.open_ms
                );
            }
        }
    }

    /// Every target with its weight and current health (always healthy without checks).
    pub fn targets(&self) -> Vec<TargetState> {
        let now = clock::now_ms();
        let states = |b: &Backends| -> Vec<TargetState> {
            b.get_backend()
                .iter()
                .filter_map(|t| {
                    let record = t.ext.get::<Arc<TargetRecord>>();
                    Some(TargetState {
                        addr: *t.addr.as_inet()?,
                        weight: t.weight,
                        healthy: b.ready(t),
                        ejected_ms: record.map_or(0, |r| r.ejected_for(now)),
                        ejections: record.map_or(0, |r| {
                            r.ejections.load(std::sync::atomic::Ordering::Relaxed)
                        }),
                        in_flight: record.map_or(0, |r| r.in_flight()),
                    })
                })
                .collect()
        };
        states(self.balancer.backends())
    }

    /// One pass of active checks over every target, all at once.
    pub async fn run_health_check(&self) {
        self.balancer.backends().run_health_check(true).await
    }
}
