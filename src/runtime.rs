//! The compiled config. Building a [`Runtime`] is the only way a config takes effect, and
//! `portico check` builds exactly the same thing as `portico run`.

use crate::cache::{self, RoutePolicy};
use crate::compose::{Call, Compose};
use crate::config::{self, Config, ConfigError, Fault, HealthCheck, Route, Upstream};
use crate::observe::metrics::RouteMetrics;
use crate::policy::access::AccessRule;
use crate::policy::auth::build::{self as auth_build, Auth};
use crate::policy::auth::jwks::RemoteKeys;
use crate::policy::compression::Compression;
use crate::policy::cors::Cors;
use crate::policy::ip_filter::IpFilter;
use crate::policy::ratelimit::local::GcraStore;
use crate::policy::ratelimit::redis::RedisLimiter;
use crate::policy::ratelimit::{self, Limit};
use crate::router::{normalize_host, PathMatch, RouteMatcher, Router};
use crate::tls::{self, listeners::ListenerSpec, sni::SniResolver};
use crate::transform::template::Template;
use crate::transform::RouteTransforms;
use crate::upstream::breaker::BreakerPolicy;
use crate::upstream::failure::FailureSet;
use crate::upstream::hash_key::HashKey;
use crate::upstream::health;
use crate::upstream::limit::ConcurrencyLimit;
use crate::upstream::mirror::Mirror;
use crate::upstream::outlier::OutlierPolicy;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::split::{Pin, Split, Sticky};
use crate::upstream::{Pool, PoolOptions, TargetSpec, TlsOptions};
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// How the path sent upstream is derived from the client's.
#[derive(Debug)]
pub enum Rewrite {
    Keep,
    /// Replace the matched prefix with `with` (empty for `strip_prefix`).
    Prefix {
        prefix: String,
        with: String,
    },
    /// Replace the whole (exactly matched) path.
    Exact(String),
    /// Regex replacement with `$1`/`$name` captures of the route's path regex.
    Regex {
        regex: Regex,
        template: String,
    },
}

impl Rewrite {
    /// The new path, or `None` when it stays as it is.
    pub fn apply<'a>(&'a self, path: &'a str) -> Option<Cow<'a, str>> {
        let out: Cow<str> = match self {
            Rewrite::Keep => return None,
            Rewrite::Prefix { prefix, with } => {
                let rest = path.strip_prefix(prefix.as_str())?;
                Cow::Owned(format!("{with}{rest}"))
            }
            Rewrite::Exact(to) => Cow::Borrowed(to.as_str()),
            Rewrite::Regex { regex, template } => regex.replace(path, template.as_str()),
        };
        Some(match out {
            o if o.is_empty() => Cow::Borrowed("/"),
            o if !o.starts_with('/') => Cow::Owned(format!("/{o}")),
            o => o,
        })
    }
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
    /// Index into [`Runtime::upstreams`].
    pub upstream: usize,
    pub rewrite: Rewrite,
    pub host: HostPolicy,
    pub access: Option<AccessRule>,
    pub limits: Vec<Limit>,
    pub cache: Option<RoutePolicy>,
    pub transforms: Option<RouteTransforms>,
    pub cors: Option<Cors>,
    pub ip_filter: Option<IpFilter>,
    pub max_request_body: Option<u64>,
    pub split: Option<Split>,
    pub mirror: Option<Mirror>,
    pub compression: Option<Compression>,
    pub compose: Option<Compose>,
    pub metrics: RouteMetrics,
    /// The route's retries; without it, the upstream's connect-only default.
    pub retry: Option<RetryPolicy>,
    /// The whole request must be answered within this.
    pub deadline: Option<std::time::Duration>,
    pub limit: Option<Arc<ConcurrencyLimit>>,
    /// Status and JSON body answered instead of a 503 when the upstream is not tried.
    pub fallback: Option<(u16, bytes::Bytes)>,
    /// Plain HTTP requests are redirected to HTTPS.
    pub redirect_https: bool,
    /// Idle limit of an upgraded connection (WebSocket), each way.
    pub upgrade_idle: std::time::Duration,
}

pub struct Runtime {
    pub server: config::ServerSection,
    /// How requests are made canonical (`server.paths`, `server.max_request_header_bytes`).
    pub edge_rules: crate::canonical::EdgeRules,
    /// TLS, redirect and HSTS settings of each listener.
    pub listener_specs: Vec<ListenerSpec>,
    /// Where plain requests are redirected: the first TLS listener's port.
    pub https_port: Option<u16>,
    /// Some listener redirects or sends HSTS: requests look up their listener.
    pub edge: bool,
    pub router: Router,
    /// Same order as the config's routes; the router returns indexes into it.
    pub routes: Vec<RouteAction>,
    pub upstreams: Vec<Arc<Pool>>,
    pub trusted_proxies: Vec<IpNet>,
    pub auth: Auth,
    /// Counters of every local rate limit.
    pub limiter: Arc<GcraStore>,
    /// The store of cluster-wide limits, when configured.
    pub redis: Option<Arc<RedisLimiter>>,
    /// The `redis` section as configured, to keep the connection over a reload.
    redis_source: String,
    /// The process's response cache (shared by every config).
    pub cache: cache::Engine,
    /// Some route caches: unsafe requests must invalidate what they change.
    pub caching: bool,
    pub admin: Option<AdminSettings>,
    pub access_log: Option<String>,
    /// Metrics are recorded only when an admin listener can serve them.
    pub metrics: bool,
    /// The header that carries request ids in and out (`server.request_id_header`).
    pub request_id_header: HeaderName,
    pub info: LoadInfo,
}

/// Which config this is, for `/status` and the metrics.
pub struct LoadInfo {
    /// 1 for the config the process started with, +1 for each one applied after it.
    pub generation: u64,
    /// SHA-256 of the file's text, hex.
    pub sha256: String,
    pub loaded_at: SystemTime,
}

/// Configs built so far in this process; the next one gets the next generation.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// The admin listener and the digest of its token.
pub struct AdminSettings {
    pub address: SocketAddr,
    pub token_sha256: Option<[u8; 32]>,
}

/// Distinct keys the local rate limiter tracks at most (about 40 MB).
const LIMITER_MAX_KEYS: usize = 1_000_000;

impl Runtime {
    /// Whether a peer at `ip` may tell us who the client is (X-Forwarded-For, Forwarded).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Read, parse, validate and build the config at `path`.
pub fn load(path: &Path) -> Result<Runtime, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        faults: vec![Fault::new("", format!("cannot read the config file: {e}"))],
    })?;
    load_str(&file, &text)
}

/// As [`load`], from text already read; `file` only names it in messages.
pub fn load_str(file: &str, text: &str) -> Result<Runtime, ConfigError> {
    build_parsed(file, config::parse(file, text)?)
}

/// Build from a parsed config; faults of parsing and of building are reported together.
pub fn build_parsed(file: &str, parsed: config::Parsed) -> Result<Runtime, ConfigError> {
    build_parsed_with(file, parsed, &Carry::default())
}

/// Read and build the config at `path` as a successor of the running one.
pub fn reload(path: &Path, running: &Runtime) -> Result<Runtime, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        faults: vec![Fault::new("", format!("cannot read the config file: {e}"))],
    })?;
    let parsed = config::parse(&file, &text)?;
    build_parsed_with(&file, parsed, &Carry::from_running(running))
}

fn build_parsed_with(
    file: &str,
    parsed: config::Parsed,
    carry: &Carry,
) -> Result<Runtime, ConfigError> {
    let mut faults = parsed.faults;
    let built = build_with(&parsed.config, &parsed.unparsed, carry);
    match built {
        Ok(mut rt) if faults.is_empty() => {
            rt.info = LoadInfo {
                generation: GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1,
                sha256: parsed.sha256,
                loaded_at: SystemTime::now(),
            };
            return Ok(rt);
        }
        Ok(_) => {}
        Err(more) => faults.extend(more),
    }
    // Parse faults come first in file order; a build fault on the same path adds nothing.
    let mut seen = HashSet::new();
    faults.retain(|f| seen.insert((f.path.clone(), f.message.clone())));
    let mut err = ConfigError {
        file: file.to_string(),
        faults,
    }
    .locate(&parsed.positions);
    err.faults.sort_by_key(|f| f.line.unwrap_or(usize::MAX));
    Err(err)
}

/// What a new config takes over from the running one: pools (with target health and check
/// tasks), remote key sets, the Redis connection — each where its section is unchanged —
/// and the local rate-limit counters (keyed by stable limit ids). The cache is
/// process-wide and needs no carrying.
#[derive(Default)]
pub struct Carry {
    pools: HashMap<String, Arc<Pool>>,
    remote_keys: HashMap<String, Arc<RemoteKeys>>,
    limiter: Option<Arc<GcraStore>>,
    redis: Option<(String, Arc<RedisLimiter>)>,
    /// Route concurrency limits by route name and size.
    route_limits: HashMap<(String, usize), Arc<ConcurrencyLimit>>,
    /// The certificate resolvers of the running TLS listeners, by address.
    resolvers: HashMap<SocketAddr, Arc<SniResolver>>,
}

impl Runtime {
    /// The addresses listened on, in config order.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        self.listener_specs.iter().map(|l| l.addr).collect()
    }

    /// What an operator should act on although the config is valid.
    pub fn warnings(&self) -> Vec<String> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        tls::listeners::expiry_warnings(&self.listener_specs, now)
    }

    /// Serve this config's certificates on the running TLS listeners; called once the
    /// config is applied.
    pub fn activate_tls(&self) {
        for l in &self.listener_specs {
            if let Some(t) = &l.tls {
                t.resolver.replace(t.certs.clone());
            }
        }
    }
}

impl Carry {
    pub fn from_running(rt: &Runtime) -> Carry {
        Carry {
            pools: rt
                .upstreams
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            remote_keys: rt
                .auth
                .jwt
                .iter()
                .filter_map(|(name, p)| Some((name.clone(), p.remote.clone()?)))
                .collect(),
            limiter: Some(rt.limiter.clone()),
            redis: rt
                .redis
                .as_ref()
                .map(|r| (rt.redis_source.clone(), r.clone())),
            route_limits: rt
                .routes
                .iter()
                .filter_map(|r| {
                    let l = r.limit.as_ref()?;
                    Some(((r.name.clone(), l.max), l.clone()))
                })
                .collect(),
            resolvers: rt
                .listener_specs
                .iter()
                .filter_map(|l| Some((l.addr, l.tls.as_ref()?.resolver.clone())))
                .collect(),
        }
    }
}

/// Build the runtime, or every fault found. `unparsed` names the upstreams and providers
/// that failed to parse: routes naming them are not reported a second time.
pub fn build(cfg: &Config, unparsed: &config::Unparsed) -> Result<Runtime, Vec<Fault>> {
    build_with(cfg, unparsed, &Carry::default())
}

/// As [`build`], taking over what `carry` holds from a running config.
pub fn build_with(
    cfg: &Config,
    unparsed: &config::Unparsed,
    carry: &Carry,
) -> Result<Runtime, Vec<Fault>> {
    let mut faults = Vec::new();
    check_server(&cfg.server, &mut faults);

    let mut listeners = Vec::new();
    if cfg.listeners.is_empty() {
        faults.push(Fault::new("listeners", "at least one listener is needed"));
    }
    let mut listener_addrs = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let path = format!("{}.address", cfg.item_path("listeners", i));
        let addr = match l.address.parse::<SocketAddr>() {
            Ok(a) if listeners.contains(&a) => {
                faults.push(Fault::new(path, format!("{a} is listed twice")));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                faults.push(Fault::new(
                    path,
                    format!("{:?} is not an IP:PORT address", l.address),
                ));
                None
            }
        };
        listeners.extend(addr);
        listener_addrs.push(addr);
    }
    let listener_specs = tls::listeners::build(cfg, &listener_addrs, &carry.resolvers, &mut faults);
    let https_port = tls::listeners::https_port(&listener_specs);
    if https_port.is_none() {
        let redirecting = cfg
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (cfg.item_path("listeners", i), l.redirect_https))
            .chain(
                cfg.routes
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (cfg.item_path("routes", i), r.redirect_https)),
            )
            .filter(|(_, on)| *on);
        for (path, _) in redirecting {
            faults.push(Fault::new(
                format!("{path}.redirect_https"),
                "there is no TLS listener to redirect to",
            ));
        }
    }

    let mut trusted_proxies = Vec::new();
    for (i, t) in cfg.trusted_proxies.iter().enumerate() {
        let net = t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => faults.push(Fault::new(
                format!("trusted_proxies[{i}]"),
                format!("{t:?} is not an IP address or CIDR block"),
            )),
        }
    }

    let mut upstreams = Vec::new();
    let mut upstream_index = HashMap::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let path = cfg.item_path("upstreams", i);
        if upstream_index.contains_key(u.name.as_str()) {
            faults.push(Fault::new(
                format!("{path}.name"),
                format!("upstream name {:?} is used twice", u.name),
            ));
            continue;
        }
        let source = upstream_fingerprint(u);
        let running = carry.pools.get(&u.name).filter(|p| p.source == source);
        if let Some(pool) = running {
            upstream_index.insert(u.name.as_str(), upstreams.len());
            upstreams.push(pool.clone());
        } else if let Some(mut pool) = build_upstream(&path, u, &mut faults) {
            pool.source = source;
            upstream_index.insert(u.name.as_str(), upstreams.len());
            upstreams.push(Arc::new(pool));
        } else {
            // Still known, so routes naming it are not reported too.
            upstream_index.insert(u.name.as_str(), usize::MAX);
        }
    }

    let auth = auth_build::build(cfg, &carry.remote_keys, &mut faults);
    let redis_password = cfg
        .redis
        .as_ref()
        .and_then(|r| r.password_file.as_deref())
        .and_then(|f| match config::read_secret(f) {
            Ok(p) => Some(p),
            Err(e) => {
                faults.push(Fault::new("redis.password_file", e));
                None
            }
        });
    // A changed password file counts as a change of the section.
    let redis_source = format!(
        "{:?} {}",
        cfg.redis,
        redis_password
            .as_deref()
            .map_or(String::new(), |p| hex::encode(
                <sha2::Sha256 as sha2::Digest>::digest(p.as_bytes())
            ))
    );
    let redis = cfg.redis.as_ref().and_then(|r| {
        if let Some((source, running)) = &carry.redis {
            if *source == redis_source {
                return Some(running.clone());
            }
        }
        if r.timeout.0.is_zero() {
            faults.push(Fault::new("redis.timeout", "must be longer than 0s"));
        }
        let fail_open = r.on_failure == config::FailurePolicy::FailOpen;
        let password = redis_password.clone();
        match RedisLimiter::new(
            &r.url,
            password,
            r.timeout.0,
            fail_open,
            r.key_prefix.clone(),
        ) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                faults.push(Fault::new("redis.url", e));
                None
            }
        }
    });

    let mut matchers = Vec::new();
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let path = cfg.item_path("routes", i);
        if r.name.is_empty() {
            faults.push(Fault::new(format!("{path}.name"), "a route needs a name"));
        } else if !route_names.insert(r.name.as_str()) {
            faults.push(Fault::new(
                format!("{path}.name"),
                format!("route name {:?} is used twice", r.name),
            ));
        }
        let upstream = match upstream_index.get(r.upstream.as_str()) {
            _ if r.compose.is_some() => {
                if !r.upstream.is_empty() {
                    faults.push(Fault::new(
                        format!("{path}.upstream"),
                        "a compose route calls its upstreams itself; remove upstream",
                    ));
                }
                usize::MAX
            }
            _ if r.upstream.is_empty() => {
                faults.push(Fault::new(
                    format!("{path}.upstream"),
                    "give the upstream (or compose) of this route",
                ));
                usize::MAX
            }
            Some(&idx) => idx,
            None => {
                if !unparsed.upstreams.contains(&r.upstream) {
                    faults.push(Fault::new(
                        format!("{path}.upstream"),
                        format!("no upstream named {:?}", r.upstream),
                    ));
                }
                usize::MAX
            }
        };
        if let Some((matcher, mut action)) =
            build_route(&path, r, upstream, &auth, unparsed, &mut faults)
        {
            let (limits_path, limits) = match &r.rate_limits {
                Some(l) => (format!("{path}.rate_limits"), l.as_slice()),
                None => (
                    "default_rate_limits".to_string(),
                    cfg.default_rate_limits.as_slice(),
                ),
            };
            action.limits = ratelimit::compile(
                &limits_path,
                limits,
                (&r.name, &matcher.path),
                cfg.redis.is_some(),
                &mut faults,
            );
            if let Some(c) = &r.cache {
                action.cache = match RoutePolicy::build(c, &cfg.cache) {
                    Ok(p) => p,
                    Err((field, message)) => {
                        faults.push(Fault::new(format!("{path}.cache.{field}"), message));
                        None
                    }
                };
            }
            if let Some(c) = &r.compression {
                match Compression::compile(c) {
                    Ok(c) => action.compression = Some(c),
                    Err((field, message)) => {
                        faults.push(Fault::new(format!("{path}.compression.{field}"), message))
                    }
                }
            }
            if let Some(c) = &r.cors {
                match Cors::compile(c) {
                    Ok(c) => action.cors = Some(c),
                    Err((field, message)) => {
                        faults.push(Fault::new(format!("{path}.cors.{field}"), message))
                    }
                }
            }
            match IpFilter::compile(&r.ip_allow, &r.ip_deny) {
                Ok(f) => action.ip_filter = f,
                Err((field, message)) => {
                    faults.push(Fault::new(format!("{path}.{field}"), message))
                }
            }
            action.max_request_body = r.max_request_body.map(|b| b.0);
            (action.split, action.mirror) =
                build_split_mirror(&path, r, upstream, &upstream_index, unparsed, &mut faults);
            if let Some(c) = &r.compose {
                let mut calls = Vec::new();
                for (k, call) in c.calls.iter().enumerate() {
                    let field = format!("{path}.compose.calls[{k}]");
                    let pool = find_upstream(
                        &upstream_index,
                        unparsed,
                        format!("{field}.upstream"),
                        &call.upstream,
                        &mut faults,
                    );
                    let template = match Template::parse(&call.path) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            faults.push(Fault::new(format!("{field}.path"), e));
                            None
                        }
                    };
                    if c.calls[..k].iter().any(|o| o.key == call.key) {
                        faults.push(Fault::new(format!("{field}.key"), "keys must differ"));
                    }
                    if let (Some(pool), Some(path)) = (pool, template) {
                        calls.push(Call {
                            key: call.key.clone(),
                            pool,
                            path,
                            timeout: call.timeout.0,
                            required: call.required,
                        });
                    }
                }
                if c.calls.is_empty() {
                    faults.push(Fault::new(
                        format!("{path}.compose.calls"),
                        "list at least one call",
                    ));
                }
                action.compose = Some(Compose { calls });
            }
            action.retry = r
                .retry
                .as_ref()
                .map(|spec| retry_policy(&format!("{path}.retry"), spec, &mut faults));
            if let Some(t) = r.timeout {
                positive(t, format!("{path}.timeout"), &mut faults);
                action.deadline = Some(t.0);
            }
            match r.max_concurrent {
                Some(0) => faults.push(Fault::new(
                    format!("{path}.max_concurrent"),
                    "must be at least 1",
                )),
                Some(max) => {
                    // Requests still in flight on the old config hold their slots.
                    let key = (r.name.clone(), max);
                    let kept = carry.route_limits.get(&key).cloned();
                    action.limit = Some(kept.unwrap_or_else(|| ConcurrencyLimit::new(max)));
                }
                None => {}
            }
            if let Some(f) = &r.fallback {
                if !(200..=599).contains(&f.status) {
                    faults.push(Fault::new(
                        format!("{path}.fallback.status"),
                        format!("{} is not a status between 200 and 599", f.status),
                    ));
                }
                action.fallback = Some((f.status, bytes::Bytes::from(f.body.to_string())));
            }
            if let Some(t) = &r.transform {
                match RouteTransforms::compile(t) {
                    Ok(t) => action.transforms = Some(t),
                    Err((field, message)) => {
                        faults.push(Fault::new(format!("{path}.transform.{field}"), message))
                    }
                }
            }
            matchers.push(matcher);
            routes.push(action);
        }
    }

    check_cache(&cfg.cache, &mut faults);
    let admin = cfg
        .admin
        .as_ref()
        .and_then(|a| admin_settings(a, &mut faults));
    if cfg.cache.purge_method && admin.as_ref().is_none_or(|a| a.token_sha256.is_none()) {
        faults.push(Fault::new(
            "cache.purge_method",
            "PURGE needs an admin token (admin.token or admin.token_file)",
        ));
    }
    let request_id_header = match HeaderName::from_bytes(cfg.server.request_id_header.as_bytes()) {
        Ok(h) => h,
        Err(_) => {
            faults.push(Fault::new(
                "server.request_id_header",
                format!("{:?} is not a header name", cfg.server.request_id_header),
            ));
            HeaderName::from_static("x-request-id")
        }
    };
    if !faults.is_empty() {
        return Err(faults);
    }
    let router = Router::new(matchers).map_err(|e| {
        vec![Fault::new(
            "routes",
            format!("the route regexes together are too large: {e}"),
        )]
    })?;
    let caching = routes.iter().any(|r| r.cache.is_some());
    let edge = listener_specs
        .iter()
        .any(|l| l.redirect_https || l.hsts.is_some());
    Ok(Runtime {
        server: cfg.server.clone(),
        edge_rules: crate::canonical::EdgeRules::new(
            cfg.server.paths.merge_slashes,
            cfg.server.paths.encoded_slash == config::EncodedSlash::Keep,
            usize::try_from(cfg.server.max_request_header_bytes.0).unwrap_or(usize::MAX),
        ),
        listener_specs,
        https_port,
        edge,
        router,
        routes,
        upstreams,
        trusted_proxies,
        auth,
        limiter: carry
            .limiter
            .clone()
            .unwrap_or_else(|| Arc::new(GcraStore::new(LIMITER_MAX_KEYS))),
        redis_source,
        redis,
        caching,
        cache: cache::Engine::get(&cfg.cache),
        metrics: admin.is_some(),
        admin,
        access_log: cfg.access_log.clone(),
        request_id_header,
        info: LoadInfo {
            generation: 0,
            sha256: String::new(),
            loaded_at: SystemTime::now(),
        },
    })
}

/// What an upstream is built from: its section, the contents of the files it names and
/// the addresses its targets resolve to now. A reload keeps the running pool (and the
/// targets' health, ejections, breaker and budget) only when all of it is the same, so a
/// rotated CA or client certificate, or a name that resolves elsewhere, takes effect.
fn upstream_fingerprint(u: &config::Upstream) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(format!("{u:?}").as_bytes());
    if let Some(t) = &u.tls {
        for file in [&t.ca, &t.client_cert, &t.client_key].into_iter().flatten() {
            // An unreadable file is reported by the build; here it only has to differ.
            h.update(std::fs::read(file).unwrap_or_default());
            h.update([0xff]);
        }
    }
    for t in &u.targets {
        if let Ok(addrs) = resolve(&t.address) {
            for a in addrs {
                h.update(a.to_string().as_bytes());
                h.update([0]);
            }
        }
    }
    hex::encode(h.finalize())
}

fn find_upstream(
    index: &HashMap<&str, usize>,
    unparsed: &config::Unparsed,
    field: String,
    name: &str,
    faults: &mut Vec<Fault>,
) -> Option<usize> {
    match index.get(name) {
        Some(&i) if i != usize::MAX => Some(i),
        Some(_) => None,
        None => {
            if !unparsed.upstreams.iter().any(|u| u == name) {
                faults.push(Fault::new(field, format!("no upstream named {name:?}")));
            }
            None
        }
    }
}

/// A route's traffic split and mirror, with their upstreams resolved.
fn build_split_mirror(
    path: &str,
    r: &Route,
    main: usize,
    index: &HashMap<&str, usize>,
    unparsed: &config::Unparsed,
    faults: &mut Vec<Fault>,
) -> (Option<Split>, Option<Mirror>) {
    let mut split = None;
    if let Some(sp) = &r.split {
        let before = faults.len();
        let mut sides = Vec::new();
        for (k, side) in sp.to.iter().enumerate() {
            let field = format!("{path}.split.to[{k}].upstream");
            if let Some(i) = find_upstream(index, unparsed, field, &side.upstream, faults) {
                sides.push((i, side.weight));
            }
        }
        let mut pins = Vec::new();
        for (k, p) in sp.pins.iter().enumerate() {
            let field = format!("{path}.split.pins[{k}]");
            let pin = match (&p.header, &p.cookie) {
                (Some(h), None) => match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(h) => Pin::Header(h, p.value.clone()),
                    Err(_) => {
                        faults.push(Fault::new(field, format!("{h:?} is not a header name")));
                        continue;
                    }
                },
                (None, Some(c)) => Pin::Cookie(c.clone(), p.value.clone()),
                _ => {
                    faults.push(Fault::new(field, "give one of header or cookie"));
                    continue;
                }
            };
            if let Some(i) = find_upstream(
                index,
                unparsed,
                format!("{field}.upstream"),
                &p.upstream,
                faults,
            ) {
                pins.push((pin, i));
            }
        }
        let sticky = match sp.sticky.as_deref() {
            None => None,
            Some("consumer") => Some(Sticky::Consumer),
            Some(k) => match HashKey::parse(k) {
                Ok(k) => Some(Sticky::Key(k)),
                Err(e) => {
                    faults.push(Fault::new(format!("{path}.split.sticky"), e));
                    None
                }
            },
        };
        if faults.len() == before {
            match Split::new(main, &sides, sticky, pins) {
                Ok(s) => split = Some(s),
                Err(e) => faults.push(Fault::new(format!("{path}.split.to"), e)),
            }
        }
    }
    let mut mirror = None;
    if let Some(m) = &r.mirror {
        if !(0.0..=100.0).contains(&m.percent) {
            faults.push(Fault::new(
                format!("{path}.mirror.percent"),
                "must be between 0 and 100",
            ));
        }
        let field = format!("{path}.mirror.upstream");
        if let Some(pool) = find_upstream(index, unparsed, field, &m.upstream, faults) {
            if m.max_in_flight == 0 {
                faults.push(Fault::new(
                    format!("{path}.mirror.max_in_flight"),
                    "must be at least 1",
                ));
            }
            mirror = Some(Mirror {
                pool,
                share: (m.percent * 100.0).round() as u32,
                timeout: m.timeout.0,
                forward_credentials: m.forward_credentials,
                slots: Arc::new(tokio::sync::Semaphore::new(m.max_in_flight)),
            });
        }
    }
    (split, mirror)
}

fn check_cache(c: &config::CacheSection, faults: &mut Vec<Fault>) {
    if c.memory.0 < 1 << 20 {
        faults.push(Fault::new("cache.memory", "give the cache at least 1MiB"));
    }
    if c.max_object_size.0 == 0 || c.max_object_size.0 > c.memory.0 {
        faults.push(Fault::new(
            "cache.max_object_size",
            "must be more than 0 and at most cache.memory",
        ));
    }
    if c.lock_timeout.0.is_zero() {
        faults.push(Fault::new("cache.lock_timeout", "must be longer than 0s"));
    }
}

/// Shortest admin token accepted: guessing it must be hopeless.
const MIN_ADMIN_TOKEN: usize = 16;

fn admin_settings(a: &config::AdminSection, faults: &mut Vec<Fault>) -> Option<AdminSettings> {
    use sha2::Digest;
    let address = match a.address.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            faults.push(Fault::new(
                "admin.address",
                format!("{:?} is not an IP:port address", a.address),
            ));
            return None;
        }
    };
    let token = match (&a.token, &a.token_file) {
        (Some(_), Some(_)) => {
            faults.push(Fault::new(
                "admin.token_file",
                "give token or token_file, not both",
            ));
            return None;
        }
        (Some(t), None) => Some((t.clone(), "admin.token")),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => Some((t.trim().to_string(), "admin.token_file")),
            Err(e) => {
                faults.push(Fault::new(
                    "admin.token_file",
                    format!("cannot read {f:?}: {e}"),
                ));
                return None;
            }
        },
        (None, None) => None,
    };
    if let Some((t, path)) = &token {
        if t.len() < MIN_ADMIN_TOKEN {
            faults.push(Fault::new(
                *path,
                format!("an admin token needs at least {MIN_ADMIN_TOKEN} characters"),
            ));
            return None;
        }
    }
    // /status names upstream addresses and certificate files: off loopback, only with a
    // token (a listener opened to the network by a typo must not serve them).
    if token.is_none() && !address.ip().is_loopback() {
        faults.push(Fault::new(
            "admin.address",
            format!("{address} is not a loopback address: set admin.token or admin.token_file"),
        ));
        return None;
    }
    Some(AdminSettings {
        address,
        token_sha256: token.map(|(t, _)| sha2::Sha256::digest(t.as_bytes()).into()),
    })
}

fn check_server(s: &config::ServerSection, faults: &mut Vec<Fault>) {
    if s.threads == 0 || s.threads > 1024 {
        faults.push(Fault::new(
            "server.threads",
            format!("{} threads is not between 1 and 1024", s.threads),
        ));
    }
    if !matches!(
        s.log_level.as_str(),
        "error" | "warn" | "info" | "debug" | "trace" | "off"
    ) {
        faults.push(Fault::new(
            "server.log_level",
            format!(
                "unknown log level {:?}; use error, warn, info, debug, trace or off",
                s.log_level
            ),
        ));
    }
    if !(1024..=16 << 20).contains(&s.read_buffer.0) {
        faults.push(Fault::new(
            "server.read_buffer",
            "must be between 1KiB and 16MiB",
        ));
    }
    // Pingora refuses headers over 1 MiB itself, before any of our code sees them.
    if !(1024..=1 << 20).contains(&s.max_request_header_bytes.0) {
        faults.push(Fault::new(
            "server.max_request_header_bytes",
            "must be between 1KiB and 1MiB",
        ));
    }
    for (field, value) in [
        ("keepalive_timeout", s.keepalive_timeout),
        ("header_timeout", s.header_timeout),
        ("body_timeout", s.body_timeout),
    ] {
        if value.0 < std::time::Duration::from_secs(1) {
            faults.push(Fault::new(format!("server.{field}"), "must be at least 1s"));
        }
    }
    for (field, value) in [("pid_file", &s.pid_file), ("upgrade_sock", &s.upgrade_sock)] {
        if value.is_empty() {
            faults.push(Fault::new(format!("server.{field}"), "must not be empty"));
        }
    }
}

fn resolve(address: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if address
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(format!("{address:?} is not HOST:PORT"));
    }
    match address.to_socket_addrs() {
        Ok(addrs) => {
            let v: Vec<_> = addrs.collect();
            if v.is_empty() {
                Err(format!("{address:?} resolves to no address"))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(format!("cannot resolve {address:?}: {e}")),
    }
}

fn positive(d: config::Dur, path: String, faults: &mut Vec<Fault>) {
    if d.0.is_zero() {
        faults.push(Fault::new(path, "must be longer than 0s"));
    }
}

fn build_upstream(path: &str, u: &Upstream, faults: &mut Vec<Fault>) -> Option<Pool> {
    let before = faults.len();
    if u.name.is_empty() {
        faults.push(Fault::new(
            format!("{path}.name"),
            "an upstream needs a name",
        ));
    }
    if u.targets.is_empty() {
        faults.push(Fault::new(
            format!("{path}.targets"),
            "the pool is empty; list at least one target",
        ));
    }
    let mut targets: Vec<TargetSpec> = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        let tpath = format!("{path}.targets[{i}]");
        if t.weight == 0 || t.weight > 100 {
            faults.push(Fault::new(
                format!("{tpath}.weight"),
                format!("weight {} is not between 1 and 100", t.weight),
            ));
        }
        let Ok(host) = HeaderValue::from_str(&t.address) else {
            faults.push(Fault::new(
                format!("{tpath}.address"),
                "not a valid address",
            ));
            continue;
        };
        match resolve(&t.address) {
            Ok(addrs) => {
                for addr in addrs {
                    if targets.iter().any(|x| x.addr == addr) {
                        faults.push(Fault::new(
                            format!("{tpath}.address"),
                            format!("target {addr} is listed twice"),
                        ));
                    } else {
                        targets.push(TargetSpec {
                            addr,
                            weight: t.weight,
                            host: host.clone(),
                        });
                    }
                }
            }
            Err(e) => faults.push(Fault::new(format!("{tpath}.address"), e)),
        }
    }

    let hash_key = match (&u.hash_key, u.algorithm) {
        (Some(spec), config::Algorithm::ConsistentHash) => match HashKey::parse(spec) {
            Ok(k) => Some(k),
            Err(e) => {
                faults.push(Fault::new(format!("{path}.hash_key"), e));
                None
            }
        },
        (None, config::Algorithm::ConsistentHash) => {
            faults.push(Fault::new(
                format!("{path}.algorithm"),
                "consistent_hash needs a hash_key (header:NAME, cookie:NAME, query:NAME, path or client_ip)",
            ));
            None
        }
        (Some(_), _) => {
            faults.push(Fault::new(
                format!("{path}.hash_key"),
                "hash_key only applies to algorithm: consistent_hash",
            ));
            None
        }
        (None, _) => None,
    };

    if let Some(hc) = &u.health_check {
        check_health_config(&format!("{path}.health_check"), hc, faults);
    }
    let t = &u.timeouts;
    positive(t.connect, format!("{path}.timeouts.connect"), faults);
    positive(t.read, format!("{path}.timeouts.read"), faults);
    positive(t.write, format!("{path}.timeouts.write"), faults);
    if u.retries > 10 {
        faults.push(Fault::new(
            format!("{path}.retries"),
            format!("{} retries is more than the 10 allowed", u.retries),
        ));
    }
    if faults.len() > before {
        return None;
    }
    let tls = u
        .tls
        .as_ref()
        .and_then(|t| upstream_tls(&format!("{path}.tls"), t, faults));
    if u.max_h2_streams == 0 {
        faults.push(Fault::new(
            format!("{path}.max_h2_streams"),
            "must be at least 1",
        ));
    }
    // Checks name the first target (or the configured SNI) when they need a server name.
    let first_host = targets
        .first()
        .and_then(|t| t.host.to_str().ok())
        .map(crate::upstream::host_only)
        .unwrap_or_default()
        .to_string();
    let check = u.health_check.as_ref().map(|hc| {
        let tls = tls.as_ref().map(|t| (t, first_host.as_str()));
        (health::build(&u.name, hc, tls, u.http2), hc.interval.0)
    });
    if u.max_concurrent == Some(0) {
        faults.push(Fault::new(
            format!("{path}.max_concurrent"),
            "must be at least 1",
        ));
    }
    let outlier = u
        .outlier_detection
        .as_ref()
        .and_then(|o| outlier_policy(&format!("{path}.outlier_detection"), o, faults));
    let breaker = u
        .circuit_breaker
        .as_ref()
        .and_then(|b| breaker_policy(&format!("{path}.circuit_breaker"), b, faults));
    if u.retry_budget.percent > 1000 {
        faults.push(Fault::new(
            format!("{path}.retry_budget.percent"),
            "must be at most 1000",
        ));
    }
    let opts = PoolOptions {
        connect_timeout: t.connect.0,
        read_timeout: t.read.0,
        write_timeout: t.write.0,
        idle_timeout: t.idle.0,
        keepalive: u.keepalive,
        retries: u.retries,
        max_concurrent: u.max_concurrent,
        outlier,
        breaker,
        budget: (u.retry_budget.percent, u.retry_budget.min_per_second),
        tls,
        http2: u.http2,
        max_h2_streams: u.max_h2_streams,
    };
    Some(Pool::new(
        &u.name,
        targets,
        u.algorithm,
        hash_key,
        check,
        opts,
    ))
}

fn upstream_tls(
    path: &str,
    t: &config::UpstreamTls,
    faults: &mut Vec<Fault>,
) -> Option<TlsOptions> {
    let before = faults.len();
    if let Some(sni) = &t.sni {
        if pingora_rustls::ServerName::try_from(sni.as_str()).is_err() {
            faults.push(Fault::new(
                format!("{path}.sni"),
                format!("{sni:?} is not a DNS name or IP address"),
            ));
        }
    }
    let ca = t.ca.as_ref().and_then(|f| {
        tls::upstream::ca_bundle(f)
            .map_err(|e| faults.push(Fault::new(format!("{path}.ca"), e)))
            .ok()
    });
    let client_cert = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => tls::upstream::client_cert(c, k)
            .map_err(|(field, e)| faults.push(Fault::new(format!("{path}.{field}"), e)))
            .ok(),
        (None, None) => None,
        (Some(_), None) => {
            faults.push(Fault::new(
                format!("{path}.client_key"),
                "client_cert needs its client_key",
            ));
            None
        }
        (None, Some(_)) => {
            faults.push(Fault::new(
                format!("{path}.client_cert"),
                "client_key needs its client_cert",
            ));
            None
        }
    };
    (faults.len() == before).then(|| TlsOptions {
        sni: t.sni.clone(),
        ca,
        verify: t.verify,
        client_cert,
    })
}

fn failure_set(path: String, names: &[config::FailureName], faults: &mut Vec<Fault>) -> FailureSet {
    FailureSet::compile(names).unwrap_or_else(|e| {
        faults.push(Fault::new(path, e));
        FailureSet::default()
    })
}

fn outlier_policy(
    path: &str,
    o: &config::OutlierDetection,
    faults: &mut Vec<Fault>,
) -> Option<OutlierPolicy> {
    if o.consecutive_failures == 0 {
        faults.push(Fault::new(
            format!("{path}.consecutive_failures"),
            "must be at least 1",
        ));
    }
    positive(o.base_ejection, format!("{path}.base_ejection"), faults);
    if o.max_ejection < o.base_ejection {
        faults.push(Fault::new(
            format!("{path}.max_ejection"),
            format!(
                "{} is shorter than base_ejection {}",
                o.max_ejection, o.base_ejection
            ),
        ));
    }
    if o.max_ejected_percent > 100 {
        faults.push(Fault::new(
            format!("{path}.max_ejected_percent"),
            "must be between 0 and 100",
        ));
    }
    Some(OutlierPolicy {
        consecutive: o.consecutive_failures,
        on: failure_set(format!("{path}.on"), &o.on, faults),
        base_ms: o.base_ejection.0.as_millis() as u64,
        max_ms: o.max_ejection.0.as_millis() as u64,
        max_ejected_percent: o.max_ejected_percent,
    })
}

fn breaker_policy(
    path: &str,
    b: &config::CircuitBreaker,
    faults: &mut Vec<Fault>,
) -> Option<BreakerPolicy> {
    if b.error_rate == 0 || b.error_rate > 100 {
        faults.push(Fault::new(
            format!("{path}.error_rate"),
            "must be between 1 and 100 (percent)",
        ));
    }
    if b.probes == 0 {
        faults.push(Fault::new(format!("{path}.probes"), "must be at least 1"));
    }
    positive(b.window, format!("{path}.window"), faults);
    positive(b.open_for, format!("{path}.open_for"), faults);
    Some(BreakerPolicy {
        error_rate: b.error_rate,
        min_requests: b.min_requests.max(1),
        window_ms: b.window.0.as_millis() as u64,
        open_ms: b.open_for.0.as_millis() as u64,
        probes: b.probes,
        on: failure_set(format!("{path}.on"), &b.on, faults),
    })
}

fn retry_policy(path: &str, r: &config::RetrySpec, faults: &mut Vec<Fault>) -> RetryPolicy {
    if r.attempts == 0 || r.attempts > 10 {
        faults.push(Fault::new(
            format!("{path}.attempts"),
            format!("{} is not between 1 and 10", r.attempts),
        ));
    }
    if let Some(t) = r.try_timeout {
        positive(t, format!("{path}.try_timeout"), faults);
    }
    if r.max_backoff < r.backoff {
        faults.push(Fault::new(
            format!("{path}.max_backoff"),
            format!("{} is shorter than backoff {}", r.max_backoff, r.backoff),
        ));
    }
    RetryPolicy {
        attempts: r.attempts,
        on: failure_set(format!("{path}.on"), &r.on, faults),
        try_timeout: r.try_timeout.map(|t| t.0),
        backoff: r.backoff.0,
        max_backoff: r.max_backoff.0,
    }
}

fn check_health_config(path: &str, hc: &HealthCheck, faults: &mut Vec<Fault>) {
    positive(hc.interval, format!("{path}.interval"), faults);
    positive(hc.timeout, format!("{path}.timeout"), faults);
    if !hc.interval.0.is_zero() && hc.timeout > hc.interval {
        faults.push(Fault::new(
            format!("{path}.timeout"),
            format!(
                "timeout {} is longer than the interval {}",
                hc.timeout, hc.interval
            ),
        ));
    }
    for (field, n) in [
        ("healthy_threshold", hc.healthy_threshold),
        ("unhealthy_threshold", hc.unhealthy_threshold),
    ] {
        if n == 0 || n > 100 {
            faults.push(Fault::new(
                format!("{path}.{field}"),
                format!("{n} is not between 1 and 100"),
            ));
        }
    }
    match hc.kind {
        config::CheckKind::Http => {
            if let Some(p) = &hc.path {
                if !p.starts_with('/') || http::uri::PathAndQuery::try_from(p.as_str()).is_err() {
                    faults.push(Fault::new(
                        format!("{path}.path"),
                        format!("{p:?} is not a path starting with /"),
                    ));
                }
            }
            if let Some(h) = &hc.host {
                if HeaderValue::from_str(h).is_err() || h.is_empty() {
                    faults.push(Fault::new(format!("{path}.host"), "not a valid Host value"));
                }
            }
        }
        config::CheckKind::Tcp => {
            for (field, set) in [
                ("path", hc.path.is_some()),
                ("host", hc.host.is_some()),
                ("expected_status", hc.expected_status.is_some()),
            ] {
                if set {
                    faults.push(Fault::new(
                        format!("{path}.{field}"),
                        "only HTTP health checks have this; a TCP check only connects",
                    ));
                }
            }
        }
    }
}

fn check_host_pattern(h: &str) -> Result<String, String> {
    let lower = h.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && normalize_host(name) == name;
    if valid {
        Ok(lower)
    } else {
        Err(format!(
            "{h:?} is not a host name or a *.example.com wildcard (no port, no scheme)"
        ))
    }
}

fn build_route(
    path: &str,
    r: &Route,
    upstream: usize,
    auth: &Auth,
    unparsed: &config::Unparsed,
    faults: &mut Vec<Fault>,
) -> Option<(RouteMatcher, RouteAction)> {
    let before = faults.len();
    let m = &r.matcher;
    let mpath = format!("{path}.match");
    let mut hosts = Vec::new();
    for (i, h) in m.hosts.iter().enumerate() {
        match check_host_pattern(h) {
            Ok(h) => hosts.push(h),
            Err(e) => faults.push(Fault::new(format!("{mpath}.hosts[{i}]"), e)),
        }
    }
    let given = [
        m.path_exact.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        faults.push(Fault::new(
            mpath.clone(),
            "give only one of path_exact, path_prefix and path_regex",
        ));
    }
    let slash = |field: &str, p: &str, faults: &mut Vec<Fault>| {
        if !p.starts_with('/') {
            faults.push(Fault::new(
                format!("{mpath}.{field}"),
                format!("{p:?} does not start with /"),
            ));
            return;
        }
        // Requests are matched in canonical form, so another spelling never matches.
        let lenient = crate::canonical::path::PathRules {
            merge_slashes: false,
            encoded_slash: crate::canonical::path::EncodedSlash::Keep,
        };
        match crate::canonical::path::canonical(p.as_bytes(), &lenient) {
            Ok(None) => {}
            Ok(Some(c)) => faults.push(Fault::new(
                format!("{mpath}.{field}"),
                format!("{p:?} would never match: request paths are canonical; write {c:?}"),
            )),
            Err(e) => faults.push(Fault::new(
                format!("{mpath}.{field}"),
                format!("{p:?} would never match: {}", e.message()),
            )),
        }
    };
    let path_match = if let Some(p) = &m.path_exact {
        slash("path_exact", p, faults);
        PathMatch::Exact(p.clone())
    } else if let Some(p) = &m.path_prefix {
        slash("path_prefix", p, faults);
        PathMatch::Prefix(p.clone())
    } else if let Some(p) = &m.path_regex {
        match Regex::new(p) {
            Ok(re) => PathMatch::Regex(re),
            Err(e) => {
                faults.push(Fault::new(
                    format!("{mpath}.path_regex"),
                    format!(
                        "invalid regex: {}",
                        e.to_string()
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                ));
                PathMatch::Any
            }
        }
    } else {
        PathMatch::Any
    };
    let mut methods = Vec::new();
    for (i, name) in m.methods.iter().enumerate() {
        let upper = name.to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(method) if !methods.contains(&method) => methods.push(method),
            Ok(_) => faults.push(Fault::new(
                format!("{mpath}.methods[{i}]"),
                format!("{name} is listed twice"),
            )),
            Err(_) => faults.push(Fault::new(
                format!("{mpath}.methods[{i}]"),
                format!("{name:?} is not an HTTP method"),
            )),
        }
    }
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let hpath = format!("{mpath}.headers[{i}]");
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            faults.push(Fault::new(
                format!("{hpath}.name"),
                format!("{:?} is not a valid header name", h.name),
            ));
            continue;
        };
        let value = match &h.value {
            None => None,
            Some(v) => match HeaderValue::from_str(v) {
                Ok(v) => Some(v),
                Err(_) => {
                    faults.push(Fault::new(
                        format!("{hpath}.value"),
                        "not a valid header value",
                    ));
                    continue;
                }
            },
        };
        headers.push((name, value));
    }

    let rewrite = match (&r.rewrite, r.strip_prefix, &path_match) {
        (Some(_), true, _) => {
            faults.push(Fault::new(
                format!("{path}.rewrite"),
                "use either strip_prefix or rewrite, not both",
            ));
            Rewrite::Keep
        }
        (None, true, PathMatch::Prefix(p)) => Rewrite::Prefix {
            prefix: p.clone(),
            with: String::new(),
        },
        (None, true, _) => {
            faults.push(Fault::new(
                format!("{path}.strip_prefix"),
                "strip_prefix needs match.path_prefix",
            ));
            Rewrite::Keep
        }
        (Some(to), false, PathMatch::Prefix(p)) => Rewrite::Prefix {
            prefix: p.clone(),
            with: to.clone(),
        },
        (Some(to), false, PathMatch::Exact(_)) => Rewrite::Exact(to.clone()),
        (Some(to), false, PathMatch::Regex(re)) => Rewrite::Regex {
            regex: re.clone(),
            template: to.clone(),
        },
        (Some(_), false, PathMatch::Any) => {
            faults.push(Fault::new(
                format!("{path}.rewrite"),
                "rewrite replaces the matched path: it needs path_exact, path_prefix or path_regex",
            ));
            Rewrite::Keep
        }
        (None, false, _) => Rewrite::Keep,
    };
    if let Some(to) = &r.rewrite {
        let sample = to.replace('$', "");
        if http::uri::PathAndQuery::try_from(format!("/{sample}").as_str()).is_err()
            || to.contains('?')
        {
            faults.push(Fault::new(
                format!("{path}.rewrite"),
                format!("{to:?} is not a valid path (a query string is kept from the request)"),
            ));
        }
    }
    let host = match (&r.host_header, r.preserve_host) {
        (Some(_), true) => {
            faults.push(Fault::new(
                format!("{path}.host_header"),
                "use either preserve_host or host_header, not both",
            ));
            HostPolicy::Target
        }
        (Some(h), false) => match HeaderValue::from_str(h) {
            Ok(v) if !h.is_empty() => HostPolicy::Fixed(v),
            _ => {
                faults.push(Fault::new(
                    format!("{path}.host_header"),
                    "not a valid Host value",
                ));
                HostPolicy::Target
            }
        },
        (None, true) => HostPolicy::Client,
        (None, false) => HostPolicy::Target,
    };
    let access = match &r.access {
        None => None,
        Some(a) => auth_build::access_rule(
            &format!("{path}.access"),
            a,
            auth,
            &unparsed.jwt_providers,
            faults,
        ),
    };
    if faults.len() > before || (upstream == usize::MAX && r.compose.is_none()) {
        return None;
    }
    Some((
        RouteMatcher {
            hosts,
            path: path_match,
            methods,
            headers,
            priority: r.priority,
        },
        RouteAction {
            metrics: RouteMetrics::new(&r.name),
            name: r.name.clone(),
            upstream,
            rewrite,
            host,
            access,
            limits: Vec::new(),
            cache: None,
            transforms: None,
            cors: None,
            ip_filter: None,
            max_request_body: None,
            split: None,
            mirror: None,
            compression: None,
            compose: None,
            retry: None,
            deadline: None,
            limit: None,
            fallback: None,
            redirect_https: r.redirect_https,
            upgrade_idle: r.upgrade_idle_timeout.0,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites() {
        let strip = Rewrite::Prefix {
            prefix: "/api".into(),
            with: String::new(),
        };
        assert_eq!(strip.apply("/api/users").as_deref(), Some("/users"));
        assert_eq!(strip.apply("/api").as_deref(), Some("/"));
        let swap = Rewrite::Prefix {
            prefix: "/v1".into(),
            with: "/v2".into(),
        };
        assert_eq!(swap.apply("/v1/x").as_deref(), Some("/v2/x"));
        let re = Rewrite::Regex {
            regex: Regex::new("^/u/(?P<id>\\d+)$").unwrap(),
            template: "/users/$id".into(),
        };
        assert_eq!(re.apply("/u/42").as_deref(), Some("/users/42"));
    }
}
