//! Prometheus metrics. The families live in the `prometheus` crate's default registry (the
//! one `pingora-prometheus` serves as well). Label values come only from the config (route
//! and upstream names) or from small fixed sets (method, status class, outcome), never from
//! the request itself. The request path records through handles resolved once per label
//! combination and kept with the route or upstream, so recording is a few atomic adds.

use http::Method;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;
use std::time::Duration;

/// Seconds; from a cache hit (~0.1 ms) to a slow upstream.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric family Portico exports.
pub struct Families {
    requests: IntCounterVec,
    duration: HistogramVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_connect_failures: IntCounterVec,
    upstream_retries: IntCounterVec,
    upstream_timeouts: IntCounterVec,
    upstream_connections: IntCounterVec,
    upstream_overloaded: IntCounterVec,
    upstream_ejections: IntCounterVec,
    upstream_breaker_opened: IntCounterVec,
    upstream_breaker_rejections: IntCounterVec,
    upstream_budget_exhausted: IntCounterVec,
    breaker_state: IntGaugeVec,
    budget_used: GaugeVec,
    target_ejected: IntGaugeVec,
    route_overloaded: IntCounterVec,
    mirror_dropped: IntCounterVec,
    jwks_refused: IntCounterVec,
    jwt_verifications: IntCounterVec,
    auth_calls: IntCounterVec,
    trace_spans: IntCounterVec,
    fleet_purges: IntCounterVec,
    cert_expiry: IntGaugeVec,
    target_healthy: IntGaugeVec,
    auth: IntCounterVec,
    rate_limit: IntCounterVec,
    rate_limit_store_errors: IntCounterVec,
    refusals: IntCounterVec,
    contract_mismatches: IntCounterVec,
    cache: IntCounterVec,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    cache_budget: IntGauge,
    cache_evictions: IntCounter,
    cache_evicted_bytes: IntCounter,
    reloads: IntCounterVec,
    generation: IntGauge,
    loaded_at: Gauge,
    access_log_dropped: IntCounter,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric options");
    registered(reg, vec)
}

fn histogram(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    registered(
        reg,
        HistogramVec::new(opts, labels).expect("valid metric options"),
    )
}

fn gauges(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric options");
    registered(reg, vec)
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    registered(
        reg,
        IntGauge::new(name, help).expect("valid metric options"),
    )
}

fn single_counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    registered(
        reg,
        IntCounter::new(name, help).expect("valid metric options"),
    )
}

/// `c`, registered in `reg`.
fn registered<C: prometheus::core::Collector + Clone + 'static>(reg: &Registry, c: C) -> C {
    register(reg, Box::new(c.clone()));
    c
}

fn register(reg: &Registry, c: Box<dyn prometheus::core::Collector>) {
    // Only a second family of the same name can fail, which would be our own bug: the
    // metric still counts, it just is not exported.
    if let Err(e) = reg.register(c) {
        log::error!("metric not registered: {e}");
    }
}

impl Families {
    fn new(reg: &Registry) -> Families {
        let rms = ["route", "method", "status"];
        let build = IntGaugeVec::new(
            Opts::new(
                "portico_build_info",
                "Version of the running binary (always 1)",
            ),
            &["version"],
        )
        .expect("valid metric options");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(reg, Box::new(build));
        let loaded_at = registered(
            reg,
            Gauge::new(
                "portico_config_load_timestamp_seconds",
                "When the config in use was loaded (Unix time)",
            )
            .expect("valid metric options"),
        );
        Families {
            requests: counter(
                reg,
                "portico_requests_total",
                "Requests answered, by route, method and status class",
                &rms,
            ),
            duration: histogram(
                reg,
                "portico_request_duration_seconds",
                "Time from the request's arrival to the end of its response",
                &rms,
            ),
            received: counter(
                reg,
                "portico_request_body_bytes_total",
                "Request body bytes read from clients",
                &["route"],
            ),
            sent: counter(
                reg,
                "portico_response_body_bytes_total",
                "Response body bytes sent to clients",
                &["route"],
            ),
            upstream_duration: histogram(
                reg,
                "portico_upstream_response_duration_seconds",
                "Time from choosing a target to its response header",
                &["upstream"],
            ),
            upstream_connect_failures: counter(
                reg,
                "portico_upstream_connect_failures_total",
                "Connections to targets that failed or timed out",
                &["upstream"],
            ),
            upstream_retries: counter(
                reg,
                "portico_upstream_retries_total",
                "Failed attempts tried again",
                &["upstream"],
            ),
            upstream_timeouts: counter(
                reg,
                "portico_upstream_timeouts_total",
                "Attempts that timed out upstream (connect, read or write)",
                &["upstream"],
            ),
            upstream_connections: counter(
                reg,
                "portico_upstream_connections_total",
                "Upstream connections used, new or reused from the keep-alive pool",
                &["upstream", "reused"],
            ),
            upstream_overloaded: counter(
                reg,
                "portico_upstream_overload_rejections_total",
                "Requests answered 503 because the upstream was at max_concurrent",
                &["upstream"],
            ),
            upstream_ejections: counter(
                reg,
                "portico_upstream_ejections_total",
                "Targets taken out by outlier detection after failing in a row",
                &["upstream"],
            ),
            upstream_breaker_opened: counter(
                reg,
                "portico_upstream_breaker_opened_total",
                "Times the upstream's circuit breaker opened",
                &["upstream"],
            ),
            upstream_breaker_rejections: counter(
                reg,
                "portico_upstream_breaker_rejections_total",
                "Requests refused at once because the circuit breaker was open",
                &["upstream"],
            ),
            upstream_budget_exhausted: counter(
                reg,
                "portico_upstream_retry_budget_exhausted_total",
                "Retries not made because the upstream's retry budget was used up",
                &["upstream"],
            ),
            breaker_state: gauges(
                reg,
                "portico_upstream_breaker_state",
                "Circuit breaker: 0 closed, 1 half-open, 2 open",
                &["upstream"],
            ),
            budget_used: registered(
                reg,
                GaugeVec::new(
                    Opts::new(
                        "portico_upstream_retry_budget_used_ratio",
                        "Retries in the last 10 s over the retries the budget allows",
                    ),
                    &["upstream"],
                )
                .expect("valid metric options"),
            ),
            target_ejected: gauges(
                reg,
                "portico_upstream_target_ejected",
                "1 while outlier detection keeps a target out",
                &["upstream", "target"],
            ),
            route_overloaded: counter(
                reg,
                "portico_route_overload_rejections_total",
                "Requests answered 503 because the route was at max_concurrent",
                &["route"],
            ),
            jwt_verifications: counter(
                reg,
                "portico_jwt_verifications_total",
                "Token signatures checked (verified tokens are cached: repeated tokens are not counted)",
                &["provider"],
            ),
            auth_calls: counter(
                reg,
                "portico_auth_calls_total",
                "What providers that ask a service did per credential: call, cache_hit, coalesced (joined a call in flight), timeout, error, discovery_failed",
                &["provider", "outcome"],
            ),
            fleet_purges: counter(
                reg,
                "portico_fleet_purges_total",
                "Cache purges from the fleet's channel: applied (from another gateway), resubscribed (everything purged after a lost subscription)",
                &["outcome"],
            ),
            trace_spans: counter(
                reg,
                "portico_trace_spans_total",
                "Spans of traced requests: exported, dropped_queue_full (the export queue was full), dropped_export_failed",
                &["outcome"],
            ),
            jwks_refused: counter(
                reg,
                "portico_jwks_keys_refused_total",
                "Keys of a fetched JWK set refused (too weak, not for verifying, duplicate kid)",
                &["provider"],
            ),
            mirror_dropped: counter(
                reg,
                "portico_mirror_dropped_total",
                "Mirrored copies not sent because max_in_flight copies were on their way",
                &["route"],
            ),
            cert_expiry: gauges(
                reg,
                "portico_tls_certificate_expiry_timestamp_seconds",
                "When each served certificate expires (Unix time), by listener and file",
                &["listener", "file"],
            ),
            target_healthy: gauges(
                reg,
                "portico_upstream_target_healthy",
                "1 while a target is in rotation, 0 while its health check fails",
                &["upstream", "target"],
            ),
            auth: counter(
                reg,
                "portico_auth_total",
                "Access checks by route and result (ok or the reason for refusing)",
                &["route", "result"],
            ),
            rate_limit: counter(
                reg,
                "portico_rate_limit_decisions_total",
                "Rate-limit decisions: allowed, limited, or dry_run_limited",
                &["route", "result"],
            ),
            rate_limit_store_errors: counter(
                reg,
                "portico_rate_limit_store_errors_total",
                "Cluster-wide limits Redis could not decide",
                &["route"],
            ),
            refusals: counter(
                reg,
                "portico_policy_refusals_total",
                "Requests a route policy answered itself, by policy and reason",
                &["route", "policy", "reason"],
            ),
            contract_mismatches: counter(
                reg,
                "portico_contract_response_mismatches_total",
                "Responses that did not match their OpenAPI operation (validate.response: report), by kind",
                &["route", "kind"],
            ),
            cache: counter(
                reg,
                "portico_cache_requests_total",
                "Cache lookups by result (hit, miss, stale, expired, revalidated, ...)",
                &["route", "result"],
            ),
            cache_entries: gauge(reg, "portico_cache_entries", "Responses in the cache"),
            cache_bytes: gauge(
                reg,
                "portico_cache_stored_bytes",
                "Weight of the cached responses (bodies, headers and bookkeeping)",
            ),
            cache_budget: gauge(reg, "portico_cache_budget_bytes", "cache.memory"),
            cache_evictions: single_counter(
                reg,
                "portico_cache_evictions_total",
                "Cached responses evicted to stay within cache.memory",
            ),
            cache_evicted_bytes: single_counter(
                reg,
                "portico_cache_evicted_bytes_total",
                "Weight of the cached responses evicted",
            ),
            reloads: counter(
                reg,
                "portico_config_reloads_total",
                "Config reloads by result (success or failure)",
                &["result"],
            ),
            generation: gauge(
                reg,
                "portico_config_generation",
                "Number of the config in use, counting from 1 at start",
            ),
            loaded_at,
            access_log_dropped: single_counter(
                reg,
                "portico_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind",
            ),
        }
    }
}

/// The families, registered in the default registry on first use.
pub fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| Families::new(prometheus::default_registry()))
}

/// Methods with a label of their own; everything else is `other`.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];
const METHOD_SLOTS: usize = METHODS.len() + 1;
/// `none` (no response was written) and 1xx-5xx.
const STATUS_LABELS: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_slot(m: &Method) -> usize {
    METHODS.iter().position(|k| k == m).unwrap_or(METHODS.len())
}

fn method_label(slot: usize) -> &'static str {
    METHODS.get(slot).map_or("other", |m| m.as_str())
}

fn status_slot(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => usize::from(s / 100),
        _ => 0,
    }
}

/// Cache results with a label of their own (Pingora's phase names).
const CACHE_RESULTS: [&str; 10] = [
    "hit",
    "miss",
    "stale",
    "stale-updating",
    "expired",
    "revalidated",
    "revalidated-nocache",
    "bypass",
    "disabled",
    "other",
];
const RATE_RESULTS: [&str; 3] = ["allowed", "limited", "dry_run_limited"];

fn slots<T, const N: usize>() -> [OnceLock<T>; N] {
    std::array::from_fn(|_| OnceLock::new())
}

/// A route's handles, resolved on first use of each label combination so that a config
/// with thousands of routes exports only the series that saw traffic.
pub struct RouteMetrics {
    /// Off when no admin listener serves the metrics: every method is then a no-op.
    enabled: bool,
    route: Box<str>,
    requests: [OnceLock<(IntCounter, Histogram)>; METHOD_SLOTS * STATUS_LABELS.len()],
    bytes: OnceLock<(IntCounter, IntCounter)>,
    auth_ok: OnceLock<IntCounter>,
    rate: [OnceLock<IntCounter>; RATE_RESULTS.len()],
    cache: [OnceLock<IntCounter>; CACHE_RESULTS.len()],
}

/// How a request went, as the metrics need it.
pub struct Finished<'a> {
    pub method: &'a Method,
    pub status: Option<u16>,
    pub duration: Duration,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

impl RouteMetrics {
    pub fn new(route: &str, enabled: bool) -> RouteMetrics {
        RouteMetrics {
            enabled,
            route: route.into(),
            requests: slots(),
            bytes: OnceLock::new(),
            auth_ok: OnceLock::new(),
            rate: slots(),
            cache: slots(),
        }
    }

    /// Requests no route took (404, 405, preflights, purges): `route=""`.
    pub fn unrouted(enabled: bool) -> RouteMetrics {
        RouteMetrics::new("", enabled)
    }

    /// Whether anything is recorded (an admin listener serves the metrics).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn request(&self, o: &Finished) {
        if !self.enabled {
            return;
        }
        let (m, s) = (method_slot(o.method), status_slot(o.status));
        let (count, duration) = self.requests[m * STATUS_LABELS.len() + s].get_or_init(|| {
            let f = families();
            let labels = [&*self.route, method_label(m), STATUS_LABELS[s]];
            (
                f.requests.with_label_values(&labels),
                f.duration.with_label_values(&labels),
            )
        });
        count.inc();
        duration.observe(o.duration.as_secs_f64());
        let (received, sent) = self.bytes.get_or_init(|| {
            let f = families();
            (
                f.received.with_label_values(&[&*self.route]),
                f.sent.with_label_values(&[&*self.route]),
            )
        });
        received.inc_by(o.bytes_in as u64);
        sent.inc_by(o.bytes_out as u64);
    }

    pub fn auth_ok(&self) {
        if !self.enabled {
            return;
        }
        self.auth_ok
            .get_or_init(|| families().auth.with_label_values(&[&*self.route, "ok"]))
            .inc();
    }

    /// A route policy answered the request itself; `reason` is one of the policy's fixed
    /// set. Refusals are the rare path: resolved per call.
    pub fn refused(&self, policy: &str, reason: &str) {
        if !self.enabled {
            return;
        }
        families()
            .refusals
            .with_label_values(&[&*self.route, policy, reason])
            .inc();
        match (policy, reason) {
            ("access", _) => self.auth_refused(reason),
            ("rate_limit", "limited") => self.rate_limit("limited"),
            _ => {}
        }
    }

    /// A response that did not match its OpenAPI operation: `status`, `media_type` or
    /// `body`. Mismatches are the rare path: resolved per call.
    pub fn contract_mismatch(&self, kind: &str) {
        if self.enabled {
            families()
                .contract_mismatches
                .with_label_values(&[&*self.route, kind])
                .inc();
        }
    }

    /// A refusal; reasons are a fixed set of static names, and refusals are the rare path.
    fn auth_refused(&self, reason: &str) {
        if !self.enabled {
            return;
        }
        families()
            .auth
            .with_label_values(&[&*self.route, reason])
            .inc();
    }

    /// `result` is one of `allowed`, `limited`, `dry_run_limited`.
    pub fn rate_limit(&self, result: &str) {
        if !self.enabled {
            return;
        }
        let Some(i) = RATE_RESULTS.iter().position(|r| *r == result) else {
            return;
        };
        self.rate[i]
            .get_or_init(|| {
                families()
                    .rate_limit
                    .with_label_values(&[&*self.route, RATE_RESULTS[i]])
            })
            .inc();
    }

    /// A request refused by the route's `max_concurrent`.
    pub fn overloaded(&self) {
        if !self.enabled {
            return;
        }
        families()
            .route_overloaded
            .with_label_values(&[&*self.route])
            .inc();
    }

    pub fn mirror_dropped(&self) {
        if !self.enabled {
            return;
        }
        families()
            .mirror_dropped
            .with_label_values(&[&*self.route])
            .inc();
    }

    pub fn rate_limit_store_error(&self) {
        if !self.enabled {
            return;
        }
        families()
            .rate_limit_store_errors
            .with_label_values(&[&*self.route])
            .inc();
    }

    /// `phase` is Pingora's cache phase name.
    pub fn cache(&self, phase: &str) {
        if !self.enabled {
            return;
        }
        let i = CACHE_RESULTS
            .iter()
            .position(|r| *r == phase)
            .unwrap_or(CACHE_RESULTS.len() - 1);
        self.cache[i]
            .get_or_init(|| {
                families()
                    .cache
                    .with_label_values(&[&*self.route, CACHE_RESULTS[i]])
            })
            .inc();
    }
}

/// A counter that counts nothing when metrics are off.
pub struct Counter(Option<IntCounter>);

impl Counter {
    pub fn inc(&self) {
        if let Some(c) = &self.0 {
            c.inc();
        }
    }
}

/// A histogram that records nothing when metrics are off.
pub struct Timer(Option<Histogram>);

impl Timer {
    pub fn observe(&self, seconds: f64) {
        if let Some(h) = &self.0 {
            h.observe(seconds);
        }
    }
}

/// An upstream's handles; few per config, so resolved at load.
pub struct UpstreamMetrics {
    pub response: Timer,
    pub connect_failures: Counter,
    pub retries: Counter,
    pub timeouts: Counter,
    pub new_connections: Counter,
    pub reused_connections: Counter,
    pub overloaded: Counter,
    pub ejections: Counter,
    pub breaker_opened: Counter,
    pub breaker_rejections: Counter,
    pub budget_exhausted: Counter,
}

impl UpstreamMetrics {
    pub fn new(upstream: &str, enabled: bool) -> UpstreamMetrics {
        let f = families();
        let on = |v: &IntCounterVec, labels: &[&str]| {
            Counter(enabled.then(|| v.with_label_values(labels)))
        };
        UpstreamMetrics {
            response: Timer(enabled.then(|| f.upstream_duration.with_label_values(&[upstream]))),
            connect_failures: on(&f.upstream_connect_failures, &[upstream]),
            retries: on(&f.upstream_retries, &[upstream]),
            timeouts: on(&f.upstream_timeouts, &[upstream]),
            new_connections: on(&f.upstream_connections, &[upstream, "false"]),
            reused_connections: on(&f.upstream_connections, &[upstream, "true"]),
            overloaded: on(&f.upstream_overloaded, &[upstream]),
            ejections: on(&f.upstream_ejections, &[upstream]),
            breaker_opened: on(&f.upstream_breaker_opened, &[upstream]),
            breaker_rejections: on(&f.upstream_breaker_rejections, &[upstream]),
            budget_exhausted: on(&f.upstream_budget_exhausted, &[upstream]),
        }
    }
}

/// Count a reload attempt; a successful one also publishes the new config's generation.
pub fn reload(ok: bool) {
    let result = if ok { "success" } else { "failure" };
    families().reloads.with_label_values(&[result]).inc();
}

pub fn access_log_dropped(n: u64) {
    families().access_log_dropped.inc_by(n);
}

/// The families that hold states rather than events, set from the running config when
/// scraped (by the admin listener, which knows the config).
pub struct StateGauges<'a> {
    pub generation: &'a IntGauge,
    pub loaded_at: &'a Gauge,
    pub target_healthy: &'a IntGaugeVec,
    pub target_ejected: &'a IntGaugeVec,
    pub breaker_state: &'a IntGaugeVec,
    pub budget_used: &'a GaugeVec,
    pub cert_expiry: &'a IntGaugeVec,
    pub cache_entries: &'a IntGauge,
    pub cache_bytes: &'a IntGauge,
    pub cache_budget: &'a IntGauge,
    pub cache_evictions: &'a IntCounter,
    pub cache_evicted_bytes: &'a IntCounter,
}

pub fn state_gauges() -> StateGauges<'static> {
    let f = families();
    StateGauges {
        generation: &f.generation,
        loaded_at: &f.loaded_at,
        target_healthy: &f.target_healthy,
        target_ejected: &f.target_ejected,
        breaker_state: &f.breaker_state,
        budget_used: &f.budget_used,
        cert_expiry: &f.cert_expiry,
        cache_entries: &f.cache_entries,
        cache_bytes: &f.cache_bytes,
        cache_budget: &f.cache_budget,
        cache_evictions: &f.cache_evictions,
        cache_evicted_bytes: &f.cache_evicted_bytes,
    }
}

/// The text exposition of every registered metric, process metrics included.
pub fn render() -> String {
    let mut out = String::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode_utf8(&prometheus::gather(), &mut out) {
        log::error!("cannot encode metrics: {e}");
    }
    out
}

/// A token of `provider` had its signature checked (a miss of the verified-token cache).
/// One outcome of a provider that asks a service (introspection, external, discovery).
pub fn auth_call(provider: &str, outcome: &str) {
    families()
        .auth_calls
        .with_label_values(&[provider, outcome])
        .inc();
}

/// One purge from the fleet's channel.
pub fn fleet_purge(outcome: &str) {
    families().fleet_purges.with_label_values(&[outcome]).inc();
}

/// The span counter of one outcome.
pub fn trace_spans_counter(outcome: &str) -> prometheus::IntCounter {
    families().trace_spans.with_label_values(&[outcome])
}

/// The counter of one outcome, resolved once for a provider's hot path.
pub fn auth_call_counter(provider: &str, outcome: &str) -> prometheus::IntCounter {
    families()
        .auth_calls
        .with_label_values(&[provider, outcome])
}

pub fn jwt_verification(provider: &str) {
    families()
        .jwt_verifications
        .with_label_values(&[provider])
        .inc();
}

/// Keys of a JWK set fetched for `provider` that were refused.
pub fn jwks_keys_refused(provider: &str, n: usize) {
    if n > 0 {
        families()
            .jwks_refused
            .with_label_values(&[provider])
            .inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family name registered, as Prometheus sees it.
    fn registered_names() -> Vec<String> {
        families();
        // Empty vectors are left out of a gather, so ask every collector for its names.
        let mut names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let f = families();
        let collectors: Vec<&dyn prometheus::core::Collector> = vec![
            &f.requests,
            &f.duration,
            &f.received,
            &f.sent,
            &f.upstream_duration,
            &f.upstream_connect_failures,
            &f.upstream_retries,
            &f.upstream_timeouts,
            &f.upstream_connections,
            &f.upstream_overloaded,
            &f.upstream_ejections,
            &f.upstream_breaker_opened,
            &f.upstream_breaker_rejections,
            &f.upstream_budget_exhausted,
            &f.breaker_state,
            &f.budget_used,
            &f.target_ejected,
            &f.route_overloaded,
            &f.mirror_dropped,
            &f.jwks_refused,
            &f.jwt_verifications,
            &f.auth_calls,
            &f.trace_spans,
            &f.fleet_purges,
            &f.cert_expiry,
            &f.target_healthy,
            &f.auth,
            &f.rate_limit,
            &f.rate_limit_store_errors,
            &f.refusals,
            &f.contract_mismatches,
            &f.cache,
            &f.reloads,
        ];
        for c in collectors {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
        }
        names
    }

    #[test]
    fn the_dashboard_and_the_alerts_use_only_metrics_that_exist() {
        let dashboard = include_str!("../../conf/grafana/portico-dashboard.json");
        let alerts = include_str!("../../conf/portico-alerts.yml");
        let names = registered_names();
        let re = regex::Regex::new(r"\b((?:portico|process)_[a-z_]+)").expect("regex");
        let mut used = 0;
        for m in re.captures_iter(dashboard).chain(re.captures_iter(alerts)) {
            let name = &m[1];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| names.iter().any(|n| n == base))
                .unwrap_or(name);
            assert!(names.iter().any(|n| n == family), "{name} is not exported");
            used += 1;
        }
        assert!(used > 28, "the dashboard and alerts query {used} metrics");
    }

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(method_label(method_slot(&Method::GET)), "GET");
        let odd = Method::from_bytes(b"PROPFIND").expect("valid method");
        assert_eq!(method_label(method_slot(&odd)), "other");
        assert_eq!(STATUS_LABELS[status_slot(Some(404))], "4xx");
        assert_eq!(STATUS_LABELS[status_slot(None)], "none");
        assert_eq!(STATUS_LABELS[status_slot(Some(700))], "none");
    }

    #[test]
    fn a_route_counts_into_its_own_series() {
        let m = RouteMetrics::new("metrics-unit-test", true);
        let o = Finished {
            method: &Method::POST,
            status: Some(201),
            duration: Duration::from_millis(3),
            bytes_in: 10,
            bytes_out: 20,
        };
        m.request(&o);
        m.request(&o);
        let c = families()
            .requests
            .with_label_values(&["metrics-unit-test", "POST", "2xx"]);
        assert_eq!(c.get(), 2);
        let sent = families().sent.with_label_values(&["metrics-unit-test"]);
        assert_eq!(sent.get(), 40);
    }
}
