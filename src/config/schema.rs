//! The YAML schema. Every struct denies unknown fields so a typo is an error, not a silent
//! default. Semantic checks (names that must exist, regexes that must compile) happen when the
//! runtime is built from these structs.

use super::duration::Dur;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub server: ServerSection,
    pub listeners: Vec<Listener>,
    pub trusted_proxies: Vec<String>,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    pub consumers: Vec<Consumer>,
    pub auth: AuthSection,
    /// Limits for routes that list none of their own.
    pub default_rate_limits: Vec<RateLimit>,
    pub redis: Option<RedisSection>,
    /// The response cache shared by every route with a `cache` policy.
    pub cache: CacheSection,
    /// The admin listener (cache purge and stats); off without this section.
    pub admin: Option<AdminSection>,
    /// `stdout` or a file for one JSON line per request; off when unset.
    pub access_log: Option<String>,
    /// Spans sent to an OpenTelemetry collector; off when unset.
    pub tracing: Option<TracingSection>,
    /// Routes made from OpenAPI documents, one per operation.
    pub apis: Vec<Api>,
    /// Where each list item stood in the file, when items that failed to parse were left
    /// out; fault paths must name the file's index, not the list's.
    pub file_index: FileIndex,
}

#[derive(Debug, Clone, Default)]
pub struct FileIndex {
    pub listeners: Vec<usize>,
    pub upstreams: Vec<usize>,
    pub routes: Vec<usize>,
    pub consumers: Vec<usize>,
    pub jwt: Vec<usize>,
    pub introspection: Vec<usize>,
    pub external: Vec<usize>,
    pub apis: Vec<usize>,
}

impl Config {
    /// The YAML path of item `i` of list `section` (`listeners`, `upstreams` or `routes`).
    pub fn item_path(&self, section: &str, i: usize) -> String {
        let index = match section {
            "listeners" => &self.file_index.listeners,
            "upstreams" => &self.file_index.upstreams,
            "consumers" => &self.file_index.consumers,
            "auth.jwt" => &self.file_index.jwt,
            "auth.introspection" => &self.file_index.introspection,
            "auth.external" => &self.file_index.external,
            "apis" => &self.file_index.apis,
            _ => &self.file_index.routes,
        };
        format!("{section}[{}]", index.get(i).copied().unwrap_or(i))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads of the proxy service.
    pub threads: usize,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// How long a stopping process keeps serving before it shuts its runtimes down.
    pub grace_period: Dur,
    /// After the grace period, how long the runtimes get to exit. Pingora ends requests
    /// still running at the end of the grace period; this does not extend them.
    pub shutdown_timeout: Dur,
    /// File the error log goes to (stderr when unset).
    pub error_log: Option<String>,
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// Idle upstream connections kept for reuse, across all upstreams.
    pub upstream_keepalive_pool_size: usize,
    /// The header a request id is taken from (when valid), forwarded in and returned in.
    pub request_id_header: String,
    /// After SIGTERM, how long `/readyz` answers 503 while the listeners still accept, so
    /// load balancers stop sending before the gateway stops accepting.
    pub drain_delay: Dur,
    /// Read buffer of each client connection (0: none, reads go to the socket). Pingora's
    /// default is 64 KiB, allocated for every connection, idle ones included.
    pub read_buffer: super::ByteSize,
    /// Let idle worker threads take work queued on busy ones (Pingora's default). Off (our
    /// default: 12% less CPU per request in the load benchmark), each connection is placed
    /// on a thread at random and runs there start to end, on a single-threaded runtime.
    pub work_stealing: bool,
    /// Accept cleartext HTTP/2 (prior knowledge, e.g. gRPC behind a TLS-terminating load
    /// balancer) on the plain listeners, next to HTTP/1.1.
    pub h2c: bool,
    /// How long a kept-alive client connection may wait for its next request.
    pub keepalive_timeout: Dur,
    /// How long a client has to send a whole request header, from when its connection
    /// opens (a kept-alive connection: `keepalive_timeout` more for the wait before it).
    pub header_timeout: Dur,
    /// How long a request body may pause between two reads before the request is cut.
    pub body_timeout: Dur,
    /// Largest request header (request line plus fields); larger ones are answered 431.
    pub max_request_header_bytes: super::ByteSize,
    /// Answer HTTP/1.1 pipelined requests one after another, in order.
    pub pipelining: bool,
    /// How request paths are made canonical before anything decides on them.
    pub paths: PathsSection,
}

/// `server.paths`: the canonical form of request paths.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PathsSection {
    /// Merge repeated `/` into one.
    pub merge_slashes: bool,
    /// `%2F` in a path: `reject` (400) or `keep` (forwarded encoded, never decoded).
    pub encoded_slash: EncodedSlash,
}

impl Default for PathsSection {
    fn default() -> Self {
        PathsSection {
            merge_slashes: true,
            encoded_slash: EncodedSlash::Reject,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlash {
    Reject,
    Keep,
}

/// See [`ServerSection::read_buffer`]; measured in issue 9's memory benchmark.
pub const READ_BUFFER_DEFAULT: u64 = 64 * 1024;

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pid_file: "/run/portico/portico.pid".into(),
            upgrade_sock: "/run/portico/upgrade.sock".into(),
            grace_period: Dur::secs(5),
            shutdown_timeout: Dur::secs(10),
            error_log: None,
            log_level: "info".into(),
            upstream_keepalive_pool_size: 128,
            request_id_header: "x-request-id".into(),
            drain_delay: Dur::secs(0),
            read_buffer: super::ByteSize(READ_BUFFER_DEFAULT),
            work_stealing: false,
            h2c: false,
            keepalive_timeout: Dur::secs(60),
            header_timeout: Dur::secs(30),
            body_timeout: Dur::secs(60),
            max_request_header_bytes: super::ByteSize(64 * 1024),
            pipelining: true,
            paths: PathsSection::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `IP:PORT` to listen on.
    pub address: String,
    /// Serve HTTPS on this listener.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Answer every request with a redirect to the same URL over HTTPS (the first TLS
    /// listener's port), except ACME HTTP-01 challenges.
    #[serde(default)]
    pub redirect_https: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chains with their keys; each serves the names in its certificate, the
    /// first one also clients that send no or an unknown name (SNI).
    pub certificates: Vec<CertificateFiles>,
    /// Offer HTTP/2 by ALPN (else HTTP/1.1 only).
    #[serde(default = "yes")]
    pub http2: bool,
    /// `Strict-Transport-Security` value sent on every response of this listener.
    #[serde(default)]
    pub hsts: Option<String>,
    /// Ask clients for a certificate signed by `ca` (mutual TLS); a verified one is a
    /// credential for the `client_cert` provider.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// PEM bundle of the authorities that issue client certificates.
    pub ca: String,
    /// Refuse the TLS handshake without a client certificate (else a client without one
    /// is served, and routes decide by their access rules).
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM: the certificate first, then its intermediates.
    pub cert: String,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    pub targets: Vec<Target>,
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Where the consistent-hash key comes from: `header:NAME`, `cookie:NAME`, `query:NAME`,
    /// `path` or `client_ip`.
    #[serde(default)]
    pub hash_key: Option<String>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Reuse upstream connections between requests.
    #[serde(default = "yes")]
    pub keepalive: bool,
    /// Further targets tried after a failed connect, each a different target.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Requests this upstream serves at once at most; beyond it the gateway answers 503
    /// with `Retry-After` at once instead of queueing.
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// Passive health: targets that keep failing real requests are taken out for a while.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Stop sending to an upstream whose requests mostly fail, and probe it before resuming.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Retries may add at most this much traffic, so they cannot multiply an outage.
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// Connect to the targets over TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Speak HTTP/2 to the targets: by ALPN over TLS, with prior knowledge (h2c) without.
    #[serde(default)]
    pub http2: bool,
    /// Requests multiplexed on one HTTP/2 connection at most.
    #[serde(default = "default_h2_streams")]
    pub max_h2_streams: usize,
}

fn default_h2_streams() -> usize {
    100
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent and verified; the target's host as written by default.
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM bundle of the authorities to trust; the system's by default.
    #[serde(default)]
    pub ca: Option<String>,
    /// Check the target's certificate (chain and name).
    #[serde(default = "yes")]
    pub verify: bool,
    /// Client certificate (PEM, then intermediates) and key for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
}

/// A failure of one attempt, as `on:` lists name them: `connect`, `timeout`, `reset`
/// (the upstream closed or broke the connection mid-exchange), `5xx` (any 5xx status) or
/// one status code such as `503`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(untagged)]
pub enum FailureName {
    Status(u16),
    Name(String),
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Failures in a row that take a target out.
    pub consecutive_failures: u32,
    /// What counts as a failure.
    pub on: Vec<FailureName>,
    /// The first ejection's length; each further one in a row doubles it.
    pub base_ejection: Dur,
    pub max_ejection: Dur,
    /// Never eject more than this share of the pool's targets at once.
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            on: default_failures(),
            base_ejection: Dur::secs(30),
            max_ejection: Dur::secs(300),
            max_ejected_percent: 50,
        }
    }
}

fn default_failures() -> Vec<FailureName> {
    ["connect", "timeout", "reset", "5xx"]
        .into_iter()
        .map(|n| FailureName::Name(n.to_string()))
        .collect()
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreaker {
    /// Percentage of failed attempts within `window` that opens the breaker.
    pub error_rate: u32,
    /// Attempts within `window` needed before the rate is judged.
    pub min_requests: u32,
    pub window: Dur,
    /// How long the breaker stays open before it lets probes through.
    pub open_for: Dur,
    /// Requests let through while half-open; that many successes close the breaker.
    pub probes: u32,
    /// What counts as a failure.
    pub on: Vec<FailureName>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            error_rate: 50,
            min_requests: 20,
            window: Dur::secs(10),
            open_for: Dur::secs(10),
            probes: 3,
            on: default_failures(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudget {
    /// Retries allowed as a percentage of the requests of the last 10 seconds.
    pub percent: u32,
    /// Retries per second allowed whatever the traffic, so a quiet upstream can still retry.
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20,
            min_per_second: 10,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_retries() -> usize {
    2
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `IP:PORT` or `HOST:PORT` (names are resolved when the config is loaded).
    pub address: String,
    #[serde(default = "one")]
    pub weight: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
    /// Of two targets drawn at random (by weight), the one with fewer requests in flight.
    LeastRequest,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// HTTP checks: the path requested with GET.
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP checks: the Host header sent (the upstream name by default).
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP checks: statuses that pass, `200` or a range `"200-399"`.
    #[serde(default)]
    pub expected_status: Option<StatusRange>,
    #[serde(default = "default_interval")]
    pub interval: Dur,
    #[serde(default = "default_check_timeout")]
    pub timeout: Dur,
    /// Consecutive passes that bring a target back.
    #[serde(default = "one")]
    pub healthy_threshold: usize,
    /// Consecutive failures that take a target out.
    #[serde(default = "one")]
    pub unhealthy_threshold: usize,
}

fn default_interval() -> Dur {
    Dur::secs(5)
}
fn default_check_timeout() -> Dur {
    Dur::secs(1)
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect: Dur,
    /// Longest wait for the next bytes of the upstream's response.
    pub read: Dur,
    pub write: Dur,
    /// How long an unused upstream connection is kept for reuse.
    pub idle: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Dur::secs(3),
            read: Dur::secs(60),
            write: Dur::secs(60),
            idle: Dur::secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    /// Higher goes first; routes of equal priority are tried in file order.
    #[serde(default)]
    pub priority: i32,
    /// Where requests go; a `compose` route has none.
    #[serde(default)]
    pub upstream: String,
    /// Remove the matched prefix (prefix routes only) before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched part of the path; with `path_regex`, `$1`/`$name` are captures.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Forward the client's Host header instead of the target address.
    #[serde(default)]
    pub preserve_host: bool,
    /// Host header sent upstream.
    #[serde(default)]
    pub host_header: Option<String>,
    /// Who may call this route; without it the route is open to anyone.
    #[serde(default)]
    pub access: Option<Access>,
    /// Rate limits of this route; all apply and the strictest decides. Without any, the
    /// top-level `default_rate_limits` apply.
    #[serde(default)]
    pub rate_limits: Option<Vec<RateLimit>>,
    /// Cache responses of this route (RFC 9111 shared-cache rules).
    #[serde(default)]
    pub cache: Option<RouteCache>,
    /// Changes to the request on its way up and the response on its way back.
    #[serde(default)]
    pub transform: Option<TransformSpec>,
    /// Cross-origin requests from browsers.
    #[serde(default)]
    pub cors: Option<Cors>,
    /// Larger request bodies get 413.
    #[serde(default)]
    pub max_request_body: Option<super::ByteSize>,
    /// Only these client addresses/CIDRs may call (behind trusted proxies, the client's).
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// These client addresses/CIDRs get 403; deny wins over allow.
    #[serde(default)]
    pub ip_deny: Vec<String>,
    /// Send part of the traffic to other upstreams (canary, A/B).
    #[serde(default)]
    pub split: Option<SplitSpec>,
    /// Copy part of the requests to a shadow upstream; its answers are dropped.
    #[serde(default)]
    pub mirror: Option<MirrorSpec>,
    /// Compress responses for clients that accept gzip, brotli or zstd.
    #[serde(default)]
    pub compression: Option<CompressionSpec>,
    /// Answer with one JSON object built from several upstream calls made concurrently.
    #[serde(default)]
    pub compose: Option<ComposeSpec>,
    /// Which failed attempts are tried again, how often and how fast.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// The whole request, every attempt and back-off included, must be answered within
    /// this; else 504.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Requests of this route in flight at once at most; the excess gets 503 at once.
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// Answered instead of a 503 when the upstream is not tried at all (breaker open, no
    /// healthy target, concurrency limit reached).
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// Redirect requests that came over plain HTTP to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// Take the route down: 503 with this message for everyone but `ip_allow`.
    #[serde(default)]
    pub maintenance: Option<MaintenanceSpec>,

    /// A WebSocket (or other upgraded connection) is closed after this long without a
    /// byte either way; the route's timeouts and `server.body_timeout` do not apply to it.
    #[serde(default = "default_upgrade_idle")]
    pub upgrade_idle_timeout: Dur,
}

fn default_upgrade_idle() -> Dur {
    Dur::secs(3600)
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Tries in all, the first included.
    pub attempts: usize,
    /// Failures tried again. A failed connect is always retried (the request never left);
    /// the rest only for idempotent methods.
    #[serde(default = "default_retry_on")]
    pub on: Vec<FailureName>,
    /// Longest one attempt may wait on the upstream: to connect, and for each read or write.
    #[serde(default)]
    pub try_timeout: Option<Dur>,
    /// Wait before retry n: random up to `backoff` x 2^(n-1), capped at `max_backoff`.
    #[serde(default = "default_backoff")]
    pub backoff: Dur,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Dur,
}

fn default_retry_on() -> Vec<FailureName> {
    ["connect", "timeout", "reset", "502", "503", "504"]
        .into_iter()
        .map(|n| match n.parse() {
            Ok(code) => FailureName::Status(code),
            Err(_) => FailureName::Name(n.to_string()),
        })
        .collect()
}
fn default_backoff() -> Dur {
    Dur::millis(25)
}
fn default_max_backoff() -> Dur {
    Dur::millis(250)
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSpec {
    #[serde(default = "default_maintenance_message")]
    pub message: String,
    /// Sent as `Retry-After` (whole seconds).
    #[serde(default)]
    pub retry_after: Option<Dur>,
    /// Clients (addresses/CIDRs, behind trusted proxies the client's) that still get
    /// through.
    #[serde(default)]
    pub ip_allow: Vec<String>,
}

fn default_maintenance_message() -> String {
    "this route is down for maintenance".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    /// Any YAML value, sent as JSON.
    pub body: serde_json::Value,
}

fn default_fallback_status() -> u16 {
    200
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComposeSpec {
    pub calls: Vec<ComposeCall>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComposeCall {
    /// The key of this call's body in the combined object.
    pub key: String,
    pub upstream: String,
    /// Path and query of the GET sent; may use variables (`/users/$query.id`).
    pub path: String,
    #[serde(default = "default_call_timeout")]
    pub timeout: Dur,
    /// A failed required call fails the whole request (502); an optional one gives `null`
    /// and its error under `errors`.
    #[serde(default = "yes")]
    pub required: bool,
}

fn default_call_timeout() -> Dur {
    Dur::secs(2)
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSpec {
    /// 1 (fast) to 9 (small); brotli and zstd use the same number.
    pub level: u32,
    /// Responses that declare a smaller length are sent as they are.
    pub min_size: super::ByteSize,
    /// Media types compressed; `text/*` matches every text type.
    pub content_types: Vec<String>,
}

impl Default for CompressionSpec {
    fn default() -> Self {
        CompressionSpec {
            level: 6,
            min_size: super::ByteSize(1024),
            content_types: [
                "text/*",
                "application/json",
                "application/javascript",
                "application/xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Other upstreams and the percentage each gets; the route's `upstream` gets the rest.
    pub to: Vec<SplitSide>,
    /// Keeps a caller on one side: `header:NAME`, `cookie:NAME`, `query:NAME`, `consumer`
    /// or `client_ip`. Without it each request is drawn on its own.
    #[serde(default)]
    pub sticky: Option<String>,
    /// Requests carrying a header or cookie with a given value go to a given upstream.
    #[serde(default)]
    pub pins: Vec<SplitPin>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitSide {
    pub upstream: String,
    /// Percent of requests, e.g. `5` or `0.5`.
    pub weight: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitPin {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    pub value: String,
    pub upstream: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub upstream: String,
    /// Percent of requests copied.
    #[serde(default = "hundred")]
    pub percent: f64,
    /// How long a copy may take before it is dropped.
    #[serde(default = "default_mirror_timeout")]
    pub timeout: Dur,
    /// Send the client's credentials (Authorization, Cookie, the API-key header) to the
    /// shadow too.
    #[serde(default)]
    pub forward_credentials: bool,
    /// Copies on their way at once at most; more are dropped and counted.
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: usize,
}

fn default_mirror_in_flight() -> usize {
    64
}

fn hundred() -> f64 {
    100.0
}
fn default_mirror_timeout() -> Dur {
    Dur::secs(5)
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins such as `https://app.example.com`, or `"*"`.
    pub allow_origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a cross-origin request may send (`"*"`: any).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight.
    #[serde(default = "default_cors_max_age")]
    pub max_age: Dur,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}
fn default_cors_max_age() -> Dur {
    Dur::secs(600)
}

/// Operations on named things (headers, query parameters). Values may hold variables.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NameOps {
    /// Replace (or create) with this value.
    pub set: std::collections::BTreeMap<String, String>,
    /// Add a value, keeping any already there.
    pub add: std::collections::BTreeMap<String, String>,
    pub remove: Vec<String>,
    /// `old: new`, values kept.
    pub rename: std::collections::BTreeMap<String, String>,
}

/// Rewrite the path with a regex; `replace` may use `$1` / `$name` captures.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathRewrite {
    pub regex: String,
    pub replace: String,
}

/// Edits of a JSON body, by JSON pointer (`/user/name`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JsonOps {
    /// Replace (or create) the value at the pointer.
    #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
    pub set: std::collections::BTreeMap<String, serde_yaml::Value>,
    /// Create the value only where the pointer finds nothing.
    #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
    pub add: std::collections::BTreeMap<String, serde_yaml::Value>,
    pub remove: Vec<String>,
    /// `/old/pointer: /new/pointer`.
    pub rename: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestTransform {
    pub headers: NameOps,
    pub query: NameOps,
    pub path: Option<PathRewrite>,
    pub json: JsonOps,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseTransform {
    pub headers: NameOps,
    pub json: JsonOps,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TransformSpec {
    pub request: RequestTransform,
    pub response: ResponseTransform,
    /// Largest JSON body a body transform buffers (413 for requests, 502 for responses
    /// beyond it).
    pub max_body: super::ByteSize,
}

impl Default for TransformSpec {
    fn default() -> Self {
        TransformSpec {
            request: RequestTransform::default(),
            response: ResponseTransform::default(),
            max_body: super::ByteSize(1 << 20),
        }
    }
}

/// The process-wide response cache.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Bytes all cached responses may take (headers, bodies and bookkeeping); the least
    /// recently used are evicted beyond it.
    pub memory: super::ByteSize,
    /// Responses larger than this are passed through and not stored.
    pub max_object_size: super::ByteSize,
    /// How long requests for a key being fetched wait for that fetch before going upstream
    /// themselves.
    pub lock_timeout: Dur,
    /// Accept the `PURGE` method on cached routes (with the admin token).
    pub purge_method: bool,
    /// A cache-control field for this gateway alone (RFC 9213): it takes precedence over
    /// `CDN-Cache-Control` and `Cache-Control` and is not forwarded to clients. `""` turns
    /// it off.
    pub targeted_field: String,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            memory: super::ByteSize(64 << 20),
            max_object_size: super::ByteSize(1 << 20),
            lock_timeout: Dur::secs(5),
            purge_method: false,
            targeted_field: "portico-cache-control".into(),
        }
    }
}

/// A route's cache policy; `cache: {}` caches with the defaults.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCache {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Methods served from the cache: GET and/or HEAD.
    #[serde(default = "default_cache_methods")]
    pub methods: Vec<String>,
    /// Freshness for responses that give none, applied only to status codes that are
    /// cacheable by default (RFC 9111 §4.2.2); without it such responses are not stored.
    #[serde(default)]
    pub default_ttl: Option<Dur>,
    /// Upper bound on any freshness lifetime the origin gives.
    #[serde(default)]
    pub max_ttl: Option<Dur>,
    #[serde(default)]
    pub key: CacheKeySpec,
    /// Requests carrying any of these (`{header: NAME}`, `{cookie: NAME}`, `{query: NAME}`)
    /// skip the cache entirely.
    #[serde(default)]
    pub bypass: Vec<TokenSource>,
    /// Store responses that set cookies (shared with every caller of the key).
    #[serde(default)]
    pub allow_set_cookie: bool,
    /// Overrides `cache.lock_timeout` for this route.
    #[serde(default)]
    pub lock_timeout: Option<Dur>,
    /// Store responses to authenticated callers under the shared key, so that any caller
    /// may get them (only when they are the same for everyone). Without it, such responses
    /// are stored only when the key separates consumers.
    #[serde(default)]
    pub share_authenticated: bool,
}

fn default_cache_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

/// What makes two requests share a cached response. Method, host and path always do.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheKeySpec {
    pub query: QueryKey,
    /// Query parameters left out of the key (tracking parameters and the like).
    pub ignore_query: Vec<String>,
    /// Request headers whose values are part of the key.
    pub headers: Vec<String>,
    /// Keep a separate entry per consumer.
    pub consumer: bool,
}

/// How the query string enters the key.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueryKey {
    /// As sent, parameter order included.
    #[default]
    Exact,
    /// Parameters sorted, so `?a=1&b=2` and `?b=2&a=1` share an entry.
    Sorted,
    /// Not at all.
    Ignore,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `127.0.0.1:9901`; keep it on loopback or a private network.
    pub address: String,
    /// Bearer token required by calls that change state; inline or read from a file.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_file: Option<String>,
    /// A request carrying this header with the admin token gets a `Portico-Explain`
    /// response header: route, policies run and their decisions, timings. The header never
    /// goes upstream. Off when unset.
    #[serde(default)]
    pub debug_header: Option<String>,
}

/// `requests` per `per`, admitting at most `burst` at once (GCRA).
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Names the limit in headers and logs.
    pub name: String,
    pub requests: u64,
    pub per: Dur,
    /// Requests admitted at once; `requests` when unset.
    #[serde(default)]
    pub burst: Option<u64>,
    /// What is counted separately: `route`, `consumer`, `client_ip`, `header:NAME` or
    /// `path:NAME` (a named capture of the route's path_regex).
    #[serde(default = "default_limit_key")]
    pub key: String,
    /// Only log and count what would be rejected.
    #[serde(default)]
    pub dry_run: bool,
    /// Send RateLimit/RateLimit-Policy headers on admitted responses too.
    #[serde(default)]
    pub headers_on_success: bool,
    /// Keep the count in the `redis` section's server, shared by every gateway using it.
    #[serde(default)]
    pub cluster: bool,
    /// IPv6 clients are counted per network of this prefix length (one holder of a /64 has
    /// all its addresses); IPv4 clients per address.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
}

fn default_ipv6_prefix() -> u8 {
    64
}

/// `tracing`: one server span per sampled request, with child spans for the policies,
/// the cache lookup and each upstream attempt, exported over OTLP.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    pub otlp: OtlpExport,
    #[serde(default)]
    pub sample: Sampling,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_service_name() -> String {
    "portico".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpExport {
    /// The collector: for `http/protobuf` the traces URL (`/v1/traces` is added to a URL
    /// without a path), for `grpc` the collector's address, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Sent with every export, e.g. an API key of the tracing backend.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The longest one export may take.
    #[serde(default = "default_otlp_timeout")]
    pub timeout: Dur,
}

fn default_otlp_timeout() -> Dur {
    Dur::secs(10)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// The share of new traces recorded, 0 to 1.
    #[serde(default = "every_trace")]
    pub ratio: f64,
    /// Follow the caller's sampled flag when it sends `traceparent`.
    #[serde(default = "yes")]
    pub parent_based: bool,
}

fn every_trace() -> f64 {
    1.0
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            ratio: 1.0,
            parent_based: true,
        }
    }
}

/// The Redis deployment the fleet shares: cluster-wide rate limits and cache purges.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `standalone` (one server at `url`), `cluster` (a Redis Cluster reached through any of
    /// `urls`) or `sentinel` (the master of `master_name`, as the Sentinels at `urls` name it).
    #[serde(default)]
    pub mode: RedisMode,
    /// `redis://[:password@]host:port[/db]`, for `standalone`.
    #[serde(default)]
    pub url: Option<String>,
    /// Seed nodes of a cluster, or the Sentinels; any one reachable is enough.
    #[serde(default)]
    pub urls: Vec<String>,
    /// The master's name as the Sentinels know it (`sentinel` mode).
    #[serde(default)]
    pub master_name: Option<String>,
    /// Longest wait for a decision before `on_failure` applies.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub on_failure: FailurePolicy,
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// A file holding the password (e.g. a systemd credential), used instead of one in the
    /// URL.
    #[serde(default)]
    pub password_file: Option<String>,
    /// The channel cache purges are published on, so that they reach every gateway
    /// sharing this Redis.
    #[serde(default = "default_purge_channel")]
    pub purge_channel: String,
}

fn default_purge_channel() -> String {
    "portico:purge".into()
}

fn default_redis_timeout() -> Dur {
    Dur::millis(50)
}
fn default_redis_prefix() -> String {
    "portico:rl:".into()
}

/// How the gateway finds its Redis.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

/// What cluster limits do when Redis cannot decide.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Admit: an outage of Redis does not take the API down.
    #[default]
    FailOpen,
    /// Refuse with 503: limits hold even when Redis is gone.
    FailClosed,
}

fn default_limit_key() -> String {
    "client_ip".into()
}

/// A route's access rule. Credentials are checked against `providers` (JWT provider names
/// or `api_key`); the identity must then hold every scope, be in one of `groups` and be one
/// of `consumers` where those are given.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Access {
    #[serde(default)]
    pub providers: Vec<String>,
    /// Every one of these scopes (from `scope` or `scp`) is required.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The consumer must be in at least one of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Only these consumers.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Let requests without credentials through (anonymously); bad credentials still fail.
    #[serde(default)]
    pub anonymous: bool,
}

/// A named caller: an app, a partner.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form labels, e.g. team or contact; not used for decisions.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// SHA-256 digests (hex) of this consumer's API keys: `portico hash-key` prints one.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Client certificates (verified on a listener with `tls.client_auth`) that identify
    /// this consumer to the `client_cert` provider.
    #[serde(default)]
    pub certificates: Vec<CertificateMatch>,
}

/// A client certificate, by its subject or one of its subject alternative names.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateMatch {
    /// The whole subject as RFC 4514 writes it, e.g. `CN=billing,O=Acme` (spaces after
    /// commas do not matter).
    #[serde(default)]
    pub subject: Option<String>,
    /// A DNS name, e-mail address or URI (e.g. a SPIFFE id) the certificate lists.
    #[serde(default)]
    pub san: Option<String>,
}

/// `auth`: parsed item by item by the loader.
#[derive(Debug, Clone, Default)]
pub struct AuthSection {
    pub jwt: Vec<JwtProvider>,
    pub api_keys: ApiKeySource,
    pub introspection: Vec<IntrospectionProvider>,
    pub external: Vec<ExternalAuth>,
}

/// What a provider does when the service it asks is slow or down.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Answer 503: nothing passes unchecked.
    #[default]
    Deny,
    /// Let the request through without an identity (as an anonymous caller).
    Allow,
}

/// OAuth 2.0 token introspection (RFC 7662) for opaque tokens.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionProvider {
    pub name: String,
    /// The introspection endpoint, `https://` (or `http://` on a trusted network).
    pub endpoint: String,
    /// The gateway's client id at the authorization server (HTTP Basic authentication).
    pub client_id: String,
    /// File holding the client secret (e.g. a systemd credential); a final newline is dropped.
    pub client_secret_file: String,
    /// PEM file of the CAs that may sign the endpoint's certificate (the system's when unset).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// How long an active token's answer is reused (never past the token's `exp`).
    #[serde(default = "default_introspection_ttl")]
    pub cache_ttl: Dur,
    /// How long an inactive token's answer is reused.
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl: Dur,
    /// The longest a request waits for the endpoint.
    #[serde(default = "default_auth_call_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Required `iss`, when the server reports one.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values; the answer must name one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The answer's members naming the consumer, first present wins.
    #[serde(default = "default_consumer_members")]
    pub consumer_from: Vec<String>,
    /// Where the token is read from, in order; `Authorization: Bearer` when empty.
    #[serde(default)]
    pub token_from: Vec<TokenSource>,
    /// Members of the answer sent upstream as headers: member name → header name.
    #[serde(default)]
    pub forward_claims: std::collections::BTreeMap<String, String>,
    /// Remove the Authorization header before forwarding.
    #[serde(default)]
    pub strip_authorization: bool,
}

fn default_introspection_ttl() -> Dur {
    Dur::secs(60)
}
fn default_negative_ttl() -> Dur {
    Dur::secs(5)
}
fn default_auth_call_timeout() -> Dur {
    Dur::millis(2000)
}
fn default_consumer_members() -> Vec<String> {
    vec!["sub".into(), "client_id".into(), "username".into()]
}

/// External authorization (forward auth): a service decides on each request.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuth {
    pub name: String,
    /// The authorization service; the request's method and canonical path (and query) are
    /// appended to this URL's path.
    pub url: String,
    /// PEM file of the CAs that may sign the service's certificate (the system's when unset).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The longest a request waits for the service.
    #[serde(default = "default_auth_call_timeout")]
    pub timeout: Dur,
    /// Client request headers sent to the service.
    #[serde(default = "default_forward_headers")]
    pub forward_headers: Vec<String>,
    /// Send the request body too (a body over `max` gets 413).
    #[serde(default)]
    pub forward_body: Option<ForwardBody>,
    /// Headers of an admitting answer copied to the upstream request (a client's own
    /// copies are always removed).
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    /// The admitting answer's header naming the consumer (for groups, limits, the log).
    #[serde(default)]
    pub consumer_header: Option<String>,
    /// Headers of a refusing answer passed to the client with its status and body.
    #[serde(default = "default_client_headers")]
    pub client_headers: Vec<String>,
    /// Reuse decisions for requests alike in `key`.
    #[serde(default)]
    pub cache: Option<DecisionCache>,
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_forward_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}
fn default_client_headers() -> Vec<String> {
    vec![
        "content-type".into(),
        "www-authenticate".into(),
        "location".into(),
        "set-cookie".into(),
        "retry-after".into(),
    ]
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardBody {
    /// At most 64 KiB.
    pub max: super::ByteSize,
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionCache {
    pub ttl: Dur,
    /// What makes two requests alike: `header:NAME`, `query:NAME`, `cookie:NAME`,
    /// `method`, `path`, `client_ip`.
    pub key: Vec<String>,
}

/// Where API keys are read from.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySource {
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// Also accept the key in this query parameter (off by default: URLs end up in logs).
    #[serde(default)]
    pub query: Option<String>,
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}

impl Default for ApiKeySource {
    fn default() -> Self {
        ApiKeySource {
            header: default_api_key_header(),
            query: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    pub name: String,
    /// Accepted `alg` values, e.g. `[RS256, ES256]`; nothing else is ever accepted.
    pub algorithms: Vec<String>,
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values; the token must name one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Keys and signing algorithms from `{issuer}/.well-known/openid-configuration`
    /// (OpenID Connect Discovery), refreshed like `keys.jwks_url`.
    #[serde(default)]
    pub issuer_discovery: bool,
    /// The discovery document's URL, when it is not under the issuer.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Given keys; optional with discovery, whose keys come from its `jwks_uri`.
    #[serde(default)]
    pub keys: JwtKeys,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Claims every token must carry (`exp` always is).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// The claim naming the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Where the token is read from, in order; `Authorization: Bearer` when empty.
    #[serde(default)]
    pub token_from: Vec<TokenSource>,
    /// Claims sent upstream as headers: claim name → header name.
    #[serde(default)]
    pub forward_claims: std::collections::BTreeMap<String, String>,
    /// Remove the Authorization header before forwarding.
    #[serde(default)]
    pub strip_authorization: bool,
}

fn default_leeway() -> Dur {
    Dur::secs(30)
}
fn default_consumer_claim() -> String {
    "sub".into()
}

/// Written `bearer`, `{header: NAME}`, `{query: NAME}` or `{cookie: NAME}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "RawTokenSource")]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    Header(String),
    Query(String),
    Cookie(String),
}

#[derive(Deserialize, PartialEq)]
#[serde(untagged)]
enum RawTokenSource {
    Word(String),
    Map(std::collections::BTreeMap<String, String>),
}

impl TryFrom<RawTokenSource> for TokenSource {
    type Error = String;
    fn try_from(raw: RawTokenSource) -> Result<Self, String> {
        let expected = "use bearer, {header: NAME}, {query: NAME} or {cookie: NAME}";
        match raw {
            RawTokenSource::Word(w) if w == "bearer" => Ok(TokenSource::Bearer),
            RawTokenSource::Map(m) if m.len() == 1 => {
                let (kind, name) = m.into_iter().next().ok_or(expected)?;
                match kind.as_str() {
                    "header" => Ok(TokenSource::Header(name)),
                    "query" => Ok(TokenSource::Query(name)),
                    "cookie" => Ok(TokenSource::Cookie(name)),
                    _ => Err(format!("unknown token source {kind:?}; {expected}")),
                }
            }
            _ => Err(format!("not a token source; {expected}")),
        }
    }
}

/// Verification keys of a provider; at least one source.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtKeys {
    /// HMAC secret, inline.
    #[serde(default)]
    pub secret: Option<String>,
    /// HMAC secret read from a file (e.g. a systemd credential); a final newline is dropped.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Public key PEM files (RSA, EC or Ed25519).
    #[serde(default)]
    pub pem_files: Vec<String>,
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// `https://` (or `http://` on a trusted network) URL of a JWK set.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM file of the CAs that may sign the `jwks_url` server's certificate (the system's
    /// trusted CAs when unset).
    #[serde(default)]
    pub jwks_ca_file: Option<String>,
    /// How often `jwks_url` is fetched again.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval: Dur,
    /// Shortest time between two fetches caused by unknown `kid`s.
    #[serde(default = "default_jwks_min_refetch")]
    pub min_refetch_interval: Dur,
}

impl Default for JwtKeys {
    fn default() -> Self {
        JwtKeys {
            secret: None,
            secret_file: None,
            pem_files: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            refresh_interval: default_jwks_refresh(),
            min_refetch_interval: default_jwks_min_refetch(),
        }
    }
}

fn default_jwks_refresh() -> Dur {
    Dur::secs(300)
}
fn default_jwks_min_refetch() -> Dur {
    Dur::secs(10)
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact names or `*.example.com` wildcards; empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub path_exact: Option<String>,
    /// Matches the path itself and anything below it (`/api` matches `/api` and `/api/x`,
    /// not `/apix`); a prefix ending in `/` matches any path starting with it.
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Empty matches every method.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// `apis[].validate`: what is checked against the document.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateSpec {
    /// Path, query and header parameters and JSON bodies; a request that does not conform
    /// gets 400 (RFC 9457 problem) or 415, and nothing reaches the upstream.
    #[serde(default)]
    pub request: bool,
    /// Largest JSON body that is validated (at most 64KiB); larger ones get 413.
    #[serde(default)]
    pub max_body: Option<super::ByteSize>,
    /// `report`: check each response's status, media type and JSON body (up to
    /// `max_body`) against the document, and only log and count what does not match.
    #[serde(default)]
    pub response: ResponseCheck,
}

/// `apis[].validate.response`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponseCheck {
    #[default]
    Off,
    Report,
}

/// `apis[]`: an OpenAPI 3.0/3.1 document as a source of routes. Every operation becomes a
/// route named `NAME.OPERATION_ID`, matched by its method and path template under
/// `base_path`. Every other field is a route field (`upstream`, `access`, `rate_limits`,
/// ...) that all of them share; `operations` overrides them per `operationId`, after the
/// operation's own `x-portico` extension.
#[derive(Debug, Clone, PartialEq)]
pub struct Api {
    pub name: String,
    /// The document's file (YAML or JSON).
    pub spec: String,
    /// Prefix of every path of the document (e.g. `/v1`).
    pub base_path: String,
    /// Hosts the routes answer for; any when empty.
    pub hosts: Vec<String>,
    /// Route fields for single operations, by `operationId`.
    pub operations: std::collections::BTreeMap<String, serde_yaml::Value>,
    /// Check requests against the document.
    pub validate: Option<ValidateSpec>,
    /// The route fields every operation's route gets.
    pub policies: serde_yaml::Mapping,
}

impl<'de> Deserialize<'de> for Api {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_yaml::Mapping::deserialize(d)?;
        let mut text = |key: &str, required: bool| -> Result<String, D::Error> {
            match map.remove(key) {
                Some(serde_yaml::Value::String(s)) => Ok(s),
                None if !required => Ok(String::new()),
                None => Err(D::Error::custom(format!("missing field `{key}`"))),
                Some(_) => Err(D::Error::custom(format!("`{key}` must be a string"))),
            }
        };
        let name = text("name", true)?;
        let spec = text("spec", true)?;
        let base_path = text("base_path", false)?;
        let hosts = match map.remove("hosts") {
            Some(v) => serde_yaml::from_value(v).map_err(D::Error::custom)?,
            None => Vec::new(),
        };
        let operations = match map.remove("operations") {
            Some(v) => serde_yaml::from_value(v).map_err(D::Error::custom)?,
            None => Default::default(),
        };
        let validate = match map.remove("validate") {
            Some(v) => Some(serde_yaml::from_value(v).map_err(D::Error::custom)?),
            None => None,
        };
        if map.contains_key("match") {
            return Err(D::Error::custom(
                "an API's routes are matched by its document: use base_path and hosts, not match",
            ));
        }
        Ok(Api {
            name,
            spec,
            base_path,
            hosts,
            operations,
            validate,
            policies: map,
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    /// Exact value required; when absent the header only has to be present.
    #[serde(default)]
    pub value: Option<String>,
}

/// HTTP statuses that a health check accepts: `200` or `"200-399"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRange(pub RangeInclusive<u16>);

impl StatusRange {
    pub fn parse(s: &str) -> Result<StatusRange, String> {
        let one = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(n) if (100..=599).contains(&n) => Ok(n),
                _ => Err(format!("{p:?} is not an HTTP status between 100 and 599")),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let n = one(s)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(format!("status range {s:?} is empty"));
        }
        Ok(StatusRange(lo..=hi))
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a status such as 200 or a range such as \"200-399\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusRange, E> {
                StatusRange::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusRange, E> {
                StatusRange::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                StatusRange::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        assert_eq!(StatusRange::parse("200"), Ok(StatusRange(200..=200)));
        assert_eq!(StatusRange::parse("200-399"), Ok(StatusRange(200..=399)));
        assert!(StatusRange::parse("399-200").is_err());
        assert!(StatusRange::parse("99").is_err());
        assert!(StatusRange::parse("ok").is_err());
    }
}
