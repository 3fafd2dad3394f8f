//! Per-route rate limits: compiled at load, decided per request against a shared store.

pub mod local;
pub mod redis;

use super::pipeline::{Build, Decision, Exchange, Respond, RoutePolicy};
use crate::config::{self, Fault};
use crate::request_parts;
use crate::router::PathMatch;
use http::HeaderName;
use local::{Gcra, GcraStore, Verdict};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use redis::RedisLimiter;
use regex::Regex;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a limit counts separately.
#[derive(Debug, Clone)]
pub enum LimitKey {
    Route,
    /// The authenticated consumer; anonymous requests are counted by client IP.
    Consumer,
    ClientIp,
    /// A header's value; requests without it are counted by client IP.
    Header(HeaderName),
    /// A named capture of the route's path regex.
    PathParam(Regex, String),
}

pub struct Limit {
    /// Part of every store key; stable across reloads (see [`stable_id`]).
    pub id: u64,
    pub name: String,
    gcra: Gcra,
    key: LimitKey,
    pub dry_run: bool,
    pub headers_on_success: bool,
    /// Counted in Redis, shared by every gateway.
    cluster: Option<ClusterScope>,
    /// `"name";q=10;w=1`, ready for RateLimit-Policy.
    policy: String,
    /// IPv6 clients are keyed by their network of this length.
    ipv6_prefix: u8,
}

/// Where a cluster limit's counters live in Redis.
#[derive(Debug, Clone)]
struct ClusterScope {
    route: String,
    limit: String,
    tag: SlotTag,
}

/// How a route's cluster-limit keys share one hash slot of a Redis Cluster, so that all
/// cluster limits of a request are still decided by one atomic script.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SlotTag {
    /// Every cluster limit of the route counts by the same key: the tag is the route and
    /// the key's value, so different clients' counters spread over the masters.
    RouteAndValue,
    /// The limits count by different keys: the tag is the route, so all of its counters
    /// live on one master.
    Route,
}

/// What a request sees of the route's limits.
pub struct Request<'a> {
    pub header: &'a RequestHeader,
    pub client_ip: Option<IpAddr>,
    pub consumer: Option<&'a str>,
}

/// The decision for one request over all limits of its route.
#[derive(Debug, Default)]
pub struct RateDecision {
    /// Set when a (non dry-run) limit refused the request.
    pub rejected_by: Option<String>,
    pub retry_after: Duration,
    /// RateLimit-Policy and RateLimit values, when they are to be sent.
    pub headers: Option<(String, String)>,
    /// Names of dry-run limits that would have refused it.
    pub would_reject: Vec<String>,
    /// Redis could not decide; `Some(true)` when the policy is to refuse (fail_closed).
    pub store_failed: Option<(String, bool)>,
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The key material of a request for one limit: kind and value (client IPs go through
/// `scratch`, so nothing is allocated).
fn key_parts<'a>(
    key: &'a LimitKey,
    ipv6_prefix: u8,
    req: &'a Request,
    scratch: &'a mut [u8; 16],
) -> (&'static str, &'a [u8]) {
    let by_ip = |scratch: &'a mut [u8; 16]| {
        (
            "ip",
            request_parts::ip_network_bytes(req.client_ip, ipv6_prefix, scratch),
        )
    };
    match key {
        LimitKey::Route => ("route", b""),
        LimitKey::ClientIp => by_ip(scratch),
        LimitKey::Consumer => match req.consumer {
            Some(c) => ("consumer", c.as_bytes()),
            None => by_ip(scratch),
        },
        LimitKey::Header(name) => match req.header.headers.get(name) {
            Some(v) => ("header", v.as_bytes()),
            None => by_ip(scratch),
        },
        LimitKey::PathParam(re, name) => {
            let value = re
                .captures(req.header.uri.path())
                .and_then(|c| c.name(name))
                .map_or(&b""[..], |m| m.as_str().as_bytes());
            ("path", value)
        }
    }
}

impl Limit {
    /// The Redis key: readable scope, then a digest of the value (bounded length, no
    /// control characters from clients). On a Redis Cluster the key carries a hash tag
    /// (`{...}`) that every key of the request shares.
    fn redis_key(
        &self,
        prefix: &str,
        scope: &ClusterScope,
        clustered: bool,
        req: &Request,
    ) -> String {
        use sha2::{Digest, Sha256};
        let mut scratch = [0u8; 16];
        let (kind, value) = key_parts(&self.key, self.ipv6_prefix, req, &mut scratch);
        let value = hex::encode(&Sha256::digest(value)[..16]);
        let ClusterScope { route, limit, tag } = scope;
        match (clustered, tag) {
            (false, _) => format!("{prefix}{route}:{limit}:{kind}:{value}"),
            (true, SlotTag::Route) => format!("{prefix}{{{route}}}:{limit}:{kind}:{value}"),
            (true, SlotTag::RouteAndValue) => {
                format!("{prefix}{{{route}:{kind}:{value}}}:{limit}")
            }
        }
    }

    fn store_key(&self, store: &GcraStore, req: &Request) -> u64 {
        let mut scratch = [0u8; 16];
        let (kind, value) = key_parts(&self.key, self.ipv6_prefix, req, &mut scratch);
        store.key(self.id, &[kind.as_bytes(), value])
    }

    fn item(&self, v: &Verdict) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.name,
            v.remaining,
            secs_ceil(v.reset_after)
        )
    }
}

/// Decide `req` against `limits`. Nothing stays counted unless every enforcing limit admits
/// the request, so a refused request does not use up another limit's allowance: each local
/// limit is checked and counted in one atomic step, cluster limits are decided (and counted)
/// atomically in Redis only when the local ones admit, and local units are given back when
/// a later limit refuses. No interleaving of concurrent requests can admit more than a
/// limit allows.
pub async fn decide(
    limits: &[Limit],
    store: &GcraStore,
    redis: Option<&redis::RedisLimiter>,
    req: &Request<'_>,
) -> RateDecision {
    let mut out = RateDecision::default();
    let mut verdicts: Vec<Option<Verdict>> = vec![None; limits.len()];
    // Local units counted for this request, to give back if it is refused after all.
    let mut counted: Vec<(u64, Gcra)> = Vec::new();
    for (i, limit) in limits.iter().enumerate() {
        if limit.cluster.is_some() {
            continue;
        }
        let key = limit.store_key(store, req);
        let v = store.check(key, limit.gcra, true);
        if v.allowed {
            counted.push((key, limit.gcra));
        }
        verdicts[i] = Some(v);
        if !v.allowed && !limit.dry_run {
            break;
        }
    }
    note_rejections(limits, &verdicts, &mut out);

    let cluster: Vec<usize> = (0..limits.len())
        .filter(|&i| limits[i].cluster.is_some())
        .collect();
    if out.rejected_by.is_none() && !cluster.is_empty() {
        if let Some(redis) = redis {
            let checks: Vec<redis::Check> = cluster
                .iter()
                .map(|&i| {
                    let l = &limits[i];
                    let key = match &l.cluster {
                        Some(scope) => {
                            l.redis_key(&redis.key_prefix, scope, redis.clustered(), req)
                        }
                        None => String::new(),
                    };
                    redis::Check {
                        key,
                        interval_us: (l.gcra.interval / 1000).max(1),
                        tolerance_us: l.gcra.tolerance / 1000,
                        enforce: !l.dry_run,
                    }
                })
                .collect();
            match Box::pin(redis.decide(&checks)).await {
                Ok(vs) => {
                    for (&i, v) in cluster.iter().zip(vs) {
                        verdicts[i] = Some(v);
                    }
                    note_rejections(limits, &verdicts, &mut out);
                }
                Err(e) => out.store_failed = Some((e, !redis.fail_open)),
            }
        }
    }

    let refused = out.rejected_by.is_some() || matches!(out.store_failed, Some((_, true)));
    if refused {
        for (key, gcra) in counted {
            store.refund(key, gcra);
        }
    }
    let send = out.rejected_by.is_some() || limits.iter().any(|l| l.headers_on_success);
    if send {
        let decided = || {
            limits
                .iter()
                .zip(&verdicts)
                .filter_map(|(l, v)| Some((l, v.as_ref()?)))
                .filter(|(l, _)| !l.dry_run)
        };
        let policy = decided()
            .map(|(l, _)| l.policy.as_str())
            .collect::<Vec<_>>();
        let state = decided().map(|(l, v)| l.item(v)).collect::<Vec<_>>();
        if !policy.is_empty() {
            out.headers = Some((policy.join(", "), state.join(", ")));
        }
    }
    out
}

fn note_rejections(limits: &[Limit], verdicts: &[Option<Verdict>], out: &mut RateDecision) {
    for (limit, v) in limits.iter().zip(verdicts) {
        let Some(v) = v else { continue };
        if v.allowed || out.would_reject.contains(&limit.name) {
            continue;
        }
        if limit.dry_run {
            out.would_reject.push(limit.name.clone());
        } else if v.retry_after >= out.retry_after {
            out.retry_after = v.retry_after;
            out.rejected_by = Some(limit.name.clone());
        }
    }
}

/// Longest time a full bucket may take to refill.
const MAX_REFILL: Duration = Duration::from_secs(365 * 24 * 3600);

/// RateLimit-Policy for a limit: the quota a client can actually use at once (the burst)
/// and the window in which that quota comes back at the configured rate, so that `q` agrees
/// with the `r` the RateLimit field reports. Without a burst of its own that is exactly
/// `requests` per `per`.
fn policy(name: &str, requests: u64, per: Duration, burst: u64) -> String {
    let window = if burst == requests {
        per
    } else {
        let nanos = per.as_nanos().saturating_mul(u128::from(burst)) / u128::from(requests.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    };
    format!("\"{name}\";q={burst};w={}", secs_ceil(window))
}

/// A limit's identity in the counter store: the same route, name and parameters give the
/// same id in every config, so a reload keeps the counters of limits it does not change
/// and starts fresh ones for limits it changes.
fn stable_id(route: &str, l: &config::RateLimit) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same in every config of this process.
    let mut h = std::hash::DefaultHasher::new();
    (
        route,
        &l.name,
        l.requests,
        l.per.0,
        l.burst,
        &l.key,
        l.cluster,
        l.ipv6_prefix,
    )
        .hash(&mut h);
    h.finish()
}

/// Compile a route's limits.
pub fn compile(
    path: &str,
    limits: &[config::RateLimit],
    route: (&str, &PathMatch),
    have_redis: bool,
    faults: &mut Vec<Fault>,
) -> Vec<Limit> {
    let (route_name, route_path) = route;
    let mut out: Vec<Limit> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, l) in limits.iter().enumerate() {
        let lpath = format!("{path}[{i}]");
        let before = faults.len();
        let valid_name = !l.name.is_empty()
            && l.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !valid_name {
            faults.push(Fault::new(
                format!("{lpath}.name"),
                "a limit needs a name of letters, digits, - _ . :",
            ));
        } else if names.contains(&l.name.as_str()) {
            faults.push(Fault::new(
                format!("{lpath}.name"),
                format!("limit name {:?} is used twice on this route", l.name),
            ));
        }
        names.push(&l.name);
        if l.requests == 0 {
            faults.push(Fault::new(
                format!("{lpath}.requests"),
                "must be at least 1",
            ));
        }
        if l.per.0 < Duration::from_millis(1) {
            faults.push(Fault::new(format!("{lpath}.per"), "must be at least 1ms"));
        }
        if l.burst == Some(0) {
            faults.push(Fault::new(format!("{lpath}.burst"), "must be at least 1"));
        }
        // The time a full bucket takes to refill: beyond a year the numbers mean nothing
        // (and would overflow the arithmetic of the counters).
        let interval = l.per.0.as_nanos() / u128::from(l.requests.max(1));
        let refill = interval.saturating_mul(u128::from(l.burst.unwrap_or(l.requests)));
        if refill > MAX_REFILL.as_nanos() {
            faults.push(Fault::new(
                format!("{lpath}.burst"),
                format!(
                    "a burst of {} at {} per {} takes over a year to refill",
                    l.burst.unwrap_or(l.requests),
                    l.requests,
                    l.per
                ),
            ));
        }
        if !(1..=128).contains(&l.ipv6_prefix) {
            faults.push(Fault::new(
                format!("{lpath}.ipv6_prefix"),
                "must be between 1 and 128",
            ));
        }
        if l.cluster && !have_redis {
            faults.push(Fault::new(
                format!("{lpath}.cluster"),
                "cluster limits need a top-level redis section",
            ));
        }
        let key = match l.key.split_once(':') {
            None => match l.key.as_str() {
                "route" => Some(LimitKey::Route),
                "consumer" => Some(LimitKey::Consumer),
                "client_ip" => Some(LimitKey::ClientIp),
                _ => None,
            },
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(LimitKey::Header),
            Some(("path", name)) => {
                match route_path {
                    PathMatch::Regex(re) if re.capture_names().flatten().any(|n| n == name) => {
                        Some(LimitKey::PathParam(re.clone(), name.to_string()))
                    }
                    _ => {
                        faults.push(Fault::new(
                        format!("{lpath}.key"),
                        format!("path:{name} needs a match.path_regex with a capture (?P<{name}>...)"),
                    ));
                        continue;
                    }
                }
            }
            Some(_) => None,
        };
        let Some(key) = key else {
            faults.push(Fault::new(
                format!("{lpath}.key"),
                format!(
                    "unknown key {:?}; use route, consumer, client_ip, header:NAME or path:NAME",
                    l.key
                ),
            ));
            continue;
        };
        if faults.len() > before {
            continue;
        }
        let burst = l.burst.unwrap_or(l.requests);
        let gcra = Gcra::new(l.requests, l.per.0, burst);
        out.push(Limit {
            id: stable_id(route_name, l),
            name: l.name.clone(),
            gcra,
            key,
            dry_run: l.dry_run,
            headers_on_success: l.headers_on_success,
            cluster: l.cluster.then(|| ClusterScope {
                route: route_name.to_string(),
                limit: l.name.clone(),
                tag: SlotTag::RouteAndValue,
            }),
            policy: policy(&l.name, l.requests, l.per.0, burst),
            ipv6_prefix: l.ipv6_prefix,
        });
    }
    // One request's cluster keys must share a slot; they can share the value's only when
    // every cluster limit counts by the same key.
    let mut keys = limits.iter().filter(|l| l.cluster).map(|l| &l.key);
    let same_key = keys.next().is_none_or(|first| keys.all(|k| k == first));
    if !same_key {
        for scope in out.iter_mut().filter_map(|l| l.cluster.as_mut()) {
            scope.tag = SlotTag::Route;
        }
    }
    out
}

/// A route's rate limits (its own, else `default_rate_limits`) with the stores they count in.
pub struct RateLimits {
    limits: Vec<Limit>,
    store: Arc<GcraStore>,
    redis: Option<Arc<RedisLimiter>>,
    /// Some limit is decided in Redis (for the trace), known at load.
    in_redis: bool,
}

impl RateLimits {
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let (path, limits) = match &b.route.rate_limits {
            Some(l) => (format!("{}.rate_limits", b.path), l.as_slice()),
            None => (
                "default_rate_limits".to_string(),
                b.src.config.default_rate_limits.as_slice(),
            ),
        };
        let route = (b.route.name.as_str(), b.path_match);
        let have_redis = b.src.config.redis.is_some();
        let limits = compile(&path, limits, route, have_redis, b.faults);
        let redis = b.src.redis.cloned();
        let in_redis = redis.is_some() && limits.iter().any(|l| l.cluster.is_some());
        (!limits.is_empty()).then(|| RateLimits {
            limits,
            store: b.src.limiter.clone(),
            redis,
            in_redis,
        })
    }
}

impl RoutePolicy for RateLimits {
    const NAME: &'static str = "rate_limit";

    fn describe(&self) -> String {
        let limits: Vec<String> = self
            .limits
            .iter()
            .map(|l| {
                let mut d = format!("{} ({})", l.name, l.policy);
                if l.cluster.is_some() {
                    d.push_str(", shared in Redis");
                }
                if l.dry_run {
                    d.push_str(", dry run");
                }
                d
            })
            .collect();
        format!("limits: {}", limits.join("; "))
    }

    async fn request(&self, x: &mut Exchange<'_>) -> Decision {
        let request = Request {
            header: x.session.req_header(),
            client_ip: x.state.effective_ip,
            consumer: x.state.consumer(),
        };
        let decided = decide(&self.limits, &self.store, self.redis.as_deref(), &request).await;
        x.state.rate_limit_redis = self.in_redis;
        if let Some((why, refuse)) = &decided.store_failed {
            x.metrics.rate_limit_store_error();
            log::warn!(
                "request {} on route {}: Redis could not decide the cluster limits ({why}); {}",
                x.request_id,
                x.route,
                if *refuse {
                    "refusing (fail_closed)"
                } else {
                    "admitting (fail_open)"
                }
            );
            if *refuse {
                let r = Respond::new(503, "store_unavailable", "rate limit store unavailable");
                return Decision::Respond(r.header("retry-after", "1"));
            }
        }
        if !decided.would_reject.is_empty() {
            x.metrics.rate_limit("dry_run_limited");
        }
        for name in &decided.would_reject {
            log::info!(
                "request {} on route {}: dry-run limit {name} would answer 429",
                x.request_id,
                x.route
            );
        }
        let Some(limit) = decided.rejected_by else {
            x.state.rate_headers = decided.headers;
            x.state.rate_limit = Some("allowed");
            x.metrics.rate_limit("allowed");
            return Decision::Continue;
        };
        x.state.rate_limit = Some("limited");
        let retry = secs_ceil(decided.retry_after).max(1);
        let message = format!("rate limit {limit} exceeded");
        let mut r = Respond::new(429, "limited", message).header("retry-after", retry.to_string());
        if let Some((policy, state)) = decided.headers {
            r.headers.push(("ratelimit-policy", policy));
            r.headers.push(("ratelimit", state));
        }
        Decision::Respond(r)
    }

    fn response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
        if let Some((policy, state)) = x.state.rate_headers.take() {
            resp.insert_header("ratelimit-policy", policy)?;
            resp.insert_header("ratelimit", state)?;
        }
        Ok(())
    }

    fn local_response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
        self.response(x, resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, key: &str) -> config::RateLimit {
        serde_yaml::from_str(&format!(
            "{{name: {name}, requests: 10, per: 1s, key: {key}, cluster: true}}"
        ))
        .expect("a limit")
    }

    /// The hash tag: what Redis Cluster hashes, the text between the first `{` and `}`.
    fn tag(key: &str) -> &str {
        let open = key.find('{').expect("a hash tag");
        let close = key[open..].find('}').expect("a closed hash tag");
        &key[open + 1..open + close]
    }

    fn keys(limits: &[config::RateLimit], ip: [u8; 4], clustered: bool) -> Vec<String> {
        let mut faults = Vec::new();
        let compiled = compile("r", limits, ("api", &PathMatch::Any), true, &mut faults);
        assert!(faults.is_empty(), "{faults:?}");
        let header = RequestHeader::build("GET", b"/", None).expect("a request");
        let req = Request {
            header: &header,
            client_ip: Some(IpAddr::from(ip)),
            consumer: None,
        };
        compiled
            .iter()
            .map(|l| {
                let scope = l.cluster.as_ref().expect("a cluster limit");
                l.redis_key("rl:", scope, clustered, &req)
            })
            .collect()
    }

    #[test]
    fn a_requests_cluster_keys_share_one_hash_slot() {
        // Same key for every limit: the tag holds the client, so clients spread.
        let same = [limit("second", "client_ip"), limit("minute", "client_ip")];
        let a = keys(&same, [10, 0, 0, 1], true);
        assert_eq!(tag(&a[0]), tag(&a[1]));
        assert!(tag(&a[0]).starts_with("api:ip:"), "{a:?}");
        let b = keys(&same, [10, 0, 0, 2], true);
        assert_ne!(tag(&a[0]), tag(&b[0]), "two clients, two slots");
        assert_ne!(a[0], a[1], "two limits, two counters");
        // Different keys: the route is the tag, for every client.
        let mixed = [limit("per-ip", "client_ip"), limit("total", "route")];
        let c = keys(&mixed, [10, 0, 0, 1], true);
        assert_eq!(tag(&c[0]), "api");
        assert_eq!(tag(&c[1]), "api");
        // Standalone keys stay as they were (a rolling upgrade keeps counting the same).
        let plain = keys(&same, [10, 0, 0, 1], false);
        assert!(plain[0].starts_with("rl:api:second:ip:"), "{plain:?}");
        assert!(!plain[0].contains('{'));
    }
}
