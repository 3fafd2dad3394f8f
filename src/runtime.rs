//! The compiled config. Building a [`Runtime`] is the only way a config takes effect, and
//! `portico check` builds exactly the same thing as `portico run`. Each section compiles
//! beside its own type (`Pool::from_config`, `RouteAction::from_config`, ...); this file
//! puts them together and carries state over a reload.

use crate::cache::{self, purge::CachedRoutes};
use crate::config::{self, AdminSettings, Config, ConfigError, Fault};
use crate::forwarding::TrustedProxies;
use crate::observe::metrics::RouteMetrics;
use crate::policy::auth::build::{self as auth_build, Auth};
use crate::policy::auth::jwks::RemoteKeys;
use crate::policy::pipeline::{Sources, UpstreamIndex};
use crate::policy::ratelimit::local::GcraStore;
use crate::policy::ratelimit::redis::RedisLimiter;
use crate::route::{openapi, RouteAction};
use crate::router::{normalize_host, RouteLookup, Router};
use crate::tls::client_auth::ClientVerifier;
use crate::tls::{self, listeners::ListenerSpec, sni::SniResolver};
use crate::upstream::limit::ConcurrencyLimit;
use crate::upstream::{Pool, Source};
use http::{HeaderMap, HeaderName, Method};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

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
    /// What each route matches, in `routes` order (for `portico explain`).
    pub matchers: Vec<crate::router::RouteMatcher>,
    /// Same order as the config's routes; the router returns indexes into it.
    pub routes: Vec<RouteAction>,
    /// The metrics of requests no route took.
    pub unrouted: RouteMetrics,
    pub upstreams: Vec<Arc<Pool>>,
    pub trusted_proxies: TrustedProxies,
    pub auth: Auth,
    /// Counters of every local rate limit.
    pub limiter: Arc<GcraStore>,
    /// The store of cluster-wide limits, when configured.
    pub redis: Option<Arc<RedisLimiter>>,
    /// The process's response cache (shared by every config).
    pub cache: cache::Engine,
    /// Some route caches: unsafe requests must invalidate what they change.
    pub caching: bool,
    pub admin: Option<AdminSettings>,
    pub access_log: Option<String>,
    /// Spans of sampled requests go here (the `tracing` section).
    pub tracer: Option<Arc<crate::observe::otel::Tracer>>,
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

/// Distinct keys the local rate limiter tracks at most (about 40 MB).
const LIMITER_MAX_KEYS: usize = 1_000_000;

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
/// tasks), remote key sets, the Redis connection — each where what it was built from is
/// equal — and the local rate-limit counters (keyed by stable limit ids). The cache is
/// process-wide and needs no carrying.
#[derive(Default)]
pub struct Carry {
    pools: HashMap<String, Arc<Pool>>,
    remote_keys: HashMap<String, Arc<RemoteKeys>>,
    limiter: Option<Arc<GcraStore>>,
    redis: Option<Arc<RedisLimiter>>,
    /// Route concurrency limits by route name and size.
    route_limits: HashMap<(String, usize), Arc<ConcurrencyLimit>>,
    /// The certificate resolvers of the running TLS listeners, by address.
    resolvers: HashMap<SocketAddr, Arc<SniResolver>>,
    /// Their client certificate verifiers, by address.
    verifiers: HashMap<SocketAddr, Arc<ClientVerifier>>,
    /// The running tracer, kept when its section is unchanged.
    tracer: Option<Arc<crate::observe::otel::Tracer>>,
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
            redis: rt.redis.clone(),
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
            verifiers: rt
                .listener_specs
                .iter()
                .filter_map(|l| Some((l.addr, l.tls.as_ref()?.verifier.clone())))
                .collect(),
            tracer: rt.tracer.clone(),
        }
    }
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
                t.verifier.set(t.client_auth.clone());
            }
        }
    }
}

impl CachedRoutes for Runtime {
    fn cache_policy(
        &self,
        host: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&cache::RoutePolicy> {
        let host = normalize_host(host);
        match self.router.find(&host, &Method::GET, path, headers) {
            RouteLookup::Found(i) => self.routes.get(i)?.cache.as_ref(),
            _ => None,
        }
    }

    fn store(&self) -> &cache::store::MemoryStore {
        self.cache.store
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
    cfg.server.check(&mut faults);
    let addresses = tls::listeners::addresses(cfg, &mut faults);
    let listener_specs = tls::listeners::build(
        cfg,
        &addresses,
        tls::listeners::Live {
            resolvers: &carry.resolvers,
            verifiers: &carry.verifiers,
        },
        &mut faults,
    );
    let https_port = tls::listeners::https_port(&listener_specs);
    tls::listeners::check_redirects(cfg, https_port, &mut faults);
    let trusted_proxies = TrustedProxies::from_config(&cfg.trusted_proxies, &mut faults);
    cfg.cache.check(&mut faults);
    let admin = cfg.admin.as_ref().and_then(|a| a.settings(&mut faults));
    if cfg.cache.purge_method && admin.as_ref().is_none_or(|a| a.token_sha256.is_none()) {
        faults.push(Fault::new(
            "cache.purge_method",
            "PURGE needs an admin token (admin.token or admin.token_file)",
        ));
    }
    let tracer = cfg.tracing.as_ref().and_then(|t| {
        crate::observe::otel::Tracer::from_config(t, carry.tracer.as_ref(), &mut faults)
    });
    // Metrics are recorded only when an admin listener can serve them.
    let metrics = admin.is_some();

    let (upstreams, upstream_index) = build_upstreams(cfg, carry, metrics, &mut faults);
    let auth = auth_build::build(cfg, &carry.remote_keys, &mut faults);
    let redis = RedisLimiter::from_config(cfg.redis.as_ref(), carry.redis.as_ref(), &mut faults);
    let limiter = carry
        .limiter
        .clone()
        .unwrap_or_else(|| Arc::new(GcraStore::new(LIMITER_MAX_KEYS)));

    let sources = Sources {
        config: cfg,
        upstreams: &upstream_index,
        pools: &upstreams,
        unparsed,
        auth: &auth,
        limiter: &limiter,
        redis: redis.as_ref(),
        route_limits: &carry.route_limits,
        metrics,
    };
    let generated = openapi::expand(cfg, &mut faults);
    openapi::conflicts(cfg, &generated, &mut faults);
    let written = cfg
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| (cfg.item_path("routes", i), r, None));
    let from_apis = generated
        .iter()
        .map(|g| (g.path.clone(), &g.route, g.contract.as_ref()));
    let mut matchers = Vec::new();
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (path, r, contract) in written.chain(from_apis) {
        if !r.name.is_empty() && !route_names.insert(r.name.as_str()) {
            faults.push(Fault::new(
                format!("{path}.name"),
                format!("route name {:?} is used twice", r.name),
            ));
        }
        if let Some((matcher, action)) =
            RouteAction::from_config(&sources, &path, r, contract, &mut faults)
        {
            matchers.push(matcher);
            routes.push(action);
        }
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
    let kept_matchers = matchers.clone();
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
        matchers: kept_matchers,
        routes,
        unrouted: RouteMetrics::unrouted(metrics),
        upstreams,
        trusted_proxies,
        auth,
        limiter,
        redis,
        caching,
        cache: cache::Engine::get(&cfg.cache),
        admin,
        access_log: cfg.access_log.clone(),
        tracer,
        request_id_header,
        info: LoadInfo {
            generation: 0,
            sha256: String::new(),
            loaded_at: SystemTime::now(),
        },
    })
}

/// The pools, in config order, and their index by name. A pool whose source is unchanged
/// is the running one.
fn build_upstreams<'c>(
    cfg: &'c Config,
    carry: &Carry,
    metrics: bool,
    faults: &mut Vec<Fault>,
) -> (Vec<Arc<Pool>>, UpstreamIndex<'c>) {
    let mut pools = Vec::new();
    let mut index = HashMap::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let path = cfg.item_path("upstreams", i);
        if index.contains_key(u.name.as_str()) {
            faults.push(Fault::new(
                format!("{path}.name"),
                format!("upstream name {:?} is used twice", u.name),
            ));
            continue;
        }
        let source = Source::of(u, metrics);
        let running = carry
            .pools
            .get(&u.name)
            .filter(|p| p.source.as_ref() == Some(&source));
        let pool = match running {
            Some(pool) => Some(pool.clone()),
            None => Pool::from_config(&path, u, metrics, faults).map(Arc::new),
        };
        // A pool that failed to build is still known, so routes naming it are not
        // reported too.
        index.insert(u.name.as_str(), pool.as_ref().map(|_| pools.len()));
        pools.extend(pool);
    }
    (pools, index)
}
