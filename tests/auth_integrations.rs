//! Identity integrations through the real gateway, each against a local server that does
//! what the RFC says: token introspection (RFC 7662), external authorization (forward
//! auth), OpenID Connect discovery with a rotating issuer, and client certificates from a
//! test CA. For the providers that ask a service: admitted, refused, slow, down (both
//! `on_failure` ways), one call for many requests, and one call for a stampede.

mod common;
use common::tls::{https1_as, TestCa};
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CLIENT_SECRET: &str = "s3cret:with/odd+chars";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// 100 concurrent requests with one credential while `service` holds its answer until 99
/// of them have joined the first one's call (the gateway's `coalesced` count says so):
/// their statuses, once the gate opened.
fn stampede(
    service: &Upstream,
    admin: u16,
    provider: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Vec<u16> {
    let gate = Gate::new(usize::MAX);
    service.set_gate(gate.clone());
    let labels = format!("outcome=\"coalesced\",provider=\"{provider}\"");
    let opener = std::thread::spawn(move || {
        let joined = eventually(Duration::from_secs(60), || {
            metric(admin, "portico_auth_calls_total", &labels) >= 99.0
        });
        gate.open();
        joined
    });
    let statuses = at_once(100, url, headers);
    assert!(
        opener.join().unwrap(),
        "99 requests joined the call in flight"
    );
    statuses
}

// ---------------------------------------------------------------------------------------
// RFC 7662 token introspection

/// An authorization server's introspection endpoint: Basic client authentication, a form
/// body with `token`, and an answer about the tokens it knows.
fn introspection_server() -> Upstream {
    let idp = Upstream::start("idp");
    idp.respond_with(|r| {
        let expected = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!(
                    "portico:{}",
                    form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect::<String>()
                )
            )
        );
        if r.method != "POST" || r.header("authorization") != Some(expected.as_str()) {
            return Script::new(
                401,
                &[("content-type", "application/json")],
                r#"{"error":"invalid_client"}"#,
            );
        }
        let token = form_urlencoded::parse(r.body.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        let active = |sub: &str, scope: &str, aud: &str| {
            json!({"active": true, "sub": sub, "client_id": "mobile-app", "scope": scope,
                   "iss": "https://id.test", "aud": aud, "exp": now() + 600,
                   "email": format!("{sub}@example.com")})
        };
        let body = match token.as_str() {
            t if t.starts_with("good") => active("ada", "orders:read orders:write", "portico"),
            "no-scope" => active("bob", "profile", "portico"),
            "other-audience" => active("eve", "orders:read", "billing"),
            "expired" => json!({"active": true, "sub": "old", "exp": now() - 5,
                                "iss": "https://id.test", "aud": "portico"}),
            _ => json!({"active": false}),
        };
        Script::new(
            200,
            &[("content-type", "application/json")],
            &body.to_string(),
        )
    });
    idp
}

/// `timeout` is how long the gateway waits for the endpoint: generous where the endpoint is
/// meant to answer (a loaded machine must not turn an answer into a 503), short where the
/// test holds it on purpose.
fn introspection_gateway(up: &Upstream, idp_addr: &str, admin: u16, timeout: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let secret = dir.join("client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    let secret = secret.display();
    Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}}}
auth:
  introspection:
    - name: opaque
      endpoint: http://{idp_addr}/oauth2/introspect
      client_id: portico
      client_secret_file: {secret}
      issuer: https://id.test
      audiences: [portico]
      cache_ttl: 60s
      timeout: {timeout}
      forward_claims: {{email: x-user-email}}
    - name: lenient
      endpoint: http://{idp_addr}/oauth2/introspect
      client_id: portico
      client_secret_file: {secret}
      timeout: {timeout}
      on_failure: allow
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: api
    access: {{providers: [opaque], scopes: [orders:read]}}
  - name: open-when-down
    match: {{path_prefix: /catalog}}
    upstream: api
    access: {{providers: [lenient]}}
"#,
        up = up.addr
    ))
}

#[test]
fn introspection_admits_active_tokens_refuses_the_rest_and_keeps_answers() {
    let up = Upstream::start("api");
    let idp = introspection_server();
    let admin = free_port();
    let gw = introspection_gateway(&up, &idp.addr.to_string(), admin, "60s");
    let url = gw.url("/orders/7");

    let r = send(
        "GET",
        &url,
        &[("authorization", "Bearer good-1"), ("x-consumer", "forged")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = up.last("/orders/7").unwrap();
    assert_eq!(seen.header("x-consumer"), Some("ada"));
    assert_eq!(seen.header("x-user-email"), Some("ada@example.com"));
    let call = idp.last("/oauth2/introspect").unwrap();
    assert_eq!(
        call.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(call.body.contains("token=good-1"), "{}", call.body);

    // The answer is kept by the token's digest: nine more requests, no more calls.
    for _ in 0..9 {
        assert_eq!(
            send("GET", &url, &[("authorization", "Bearer good-1")]).status,
            200
        );
    }
    assert_eq!(idp.count(), 1, "one introspection call for ten requests");
    assert_eq!(
        metric(
            admin,
            "portico_auth_calls_total",
            "outcome=\"cache_hit\",provider=\"opaque\""
        ),
        9.0
    );

    for (token, status, reason) in [
        ("unknown", 401, "the token is not active"),
        ("expired", 401, "the token has expired"),
        ("other-audience", 401, "audience is not accepted"),
        ("no-scope", 403, "missing scope: orders:read"),
    ] {
        let r = send(
            "GET",
            &url,
            &[("authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(r.status, status, "{token}: {r:?}");
        assert!(r.body.contains(reason), "{token}: {}", r.body);
        assert!(r
            .header("www-authenticate")
            .unwrap_or_default()
            .starts_with("Bearer"));
    }
    // Refusals are kept briefly too.
    let before = idp.count();
    assert_eq!(
        send("GET", &url, &[("authorization", "Bearer unknown")]).status,
        401
    );
    assert_eq!(idp.count(), before, "an inactive answer is reused");
    let r = send("GET", &url, &[]);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("credentials are required"));
    // No call ever carried a token in the URL or went without client authentication.
    for c in idp.requests() {
        assert_eq!(c.target, "/oauth2/introspect");
        assert!(c.header("authorization").unwrap().starts_with("Basic "));
    }
    assert_eq!(up.count(), 10, "only admitted requests reached the service");
}

#[test]
fn introspection_stampede_makes_one_call() {
    let up = Upstream::start("api");
    let idp = introspection_server();
    let admin = free_port();
    let gw = introspection_gateway(&up, &idp.addr.to_string(), admin, "60s");
    let auth = [("authorization", "Bearer good-stampede")];
    let statuses = stampede(&idp, admin, "opaque", &gw.url("/orders/1"), &auth);
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        100,
        "{statuses:?}"
    );
    assert_eq!(
        idp.count(),
        1,
        "one introspection call for 100 concurrent requests"
    );
    assert_eq!(up.count(), 100);
}

#[test]
fn introspection_slow_or_down_answers_503_or_lets_through_as_configured() {
    let up = Upstream::start("api");
    let idp = introspection_server();
    let admin = free_port();
    let gw = introspection_gateway(&up, &idp.addr.to_string(), admin, "2s");

    // Slow: the endpoint holds its answer until the test has the gateway's.
    let gate = Gate::new(usize::MAX);
    idp.set_gate(gate.clone());
    let r = send(
        "GET",
        &gw.url("/orders/1"),
        &[("authorization", "Bearer good-slow")],
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("cannot be checked now"));
    assert!(
        eventually(Duration::from_secs(30), || idp.count() == 1),
        "the endpoint had the call and had not answered"
    );
    let r = send(
        "GET",
        &gw.url("/catalog"),
        &[("authorization", "Bearer good-slow2")],
    );
    assert_eq!(r.status, 200, "on_failure: allow lets it through: {r:?}");
    assert_eq!(
        up.last("/catalog").unwrap().header("x-consumer"),
        None,
        "without an identity"
    );
    gate.open();
    assert_eq!(
        metric(admin, "portico_auth_calls_total", "outcome=\"timeout\""),
        2.0
    );

    // Down: nothing listens any more.
    idp.stop();
    let r = send(
        "GET",
        &gw.url("/orders/1"),
        &[("authorization", "Bearer good-down")],
    );
    assert_eq!(r.status, 503, "{r:?}");
    let r = send(
        "GET",
        &gw.url("/catalog"),
        &[("authorization", "Bearer good-down2")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        metric(admin, "portico_auth_calls_total", "outcome=\"error\""),
        2.0
    );
    assert_eq!(
        metric(
            admin,
            "portico_auth_calls_total",
            "outcome=\"waived\",provider=\"lenient\""
        ),
        2.0
    );
    // A failure is not kept: once the endpoint is back, the same token is admitted.
    let _back = idp.restart();
    let r = send(
        "GET",
        &gw.url("/orders/1"),
        &[("authorization", "Bearer good-down")],
    );
    assert_eq!(r.status, 200, "{r:?}");
}

// ---------------------------------------------------------------------------------------
// External authorization (forward auth)

/// An authorization service: `let-me-in` is Ada, `login` is sent to a login page, the
/// rest is refused with the service's own answer.
fn authz_server() -> Upstream {
    let authz = Upstream::start("authz");
    authz.respond_with(|r| match r.header("authorization") {
        Some("Bearer let-me-in") => Script::new(
            200,
            &[
                ("x-user-id", "u-42"),
                ("x-user-name", "ada"),
                ("x-internal", "do-not-pass"),
            ],
            "",
        ),
        Some("Bearer login") => Script::new(302, &[("location", "https://login.test/?next=1")], ""),
        Some("Bearer chatty") => {
            Script::new(403, &[("content-type", "text/plain")], &"x".repeat(100_000))
        }
        _ => Script::new(
            401,
            &[
                ("content-type", "application/json"),
                ("www-authenticate", "Bearer realm=\"authz\""),
                ("x-internal", "do-not-pass"),
            ],
            r#"{"error":"who are you"}"#,
        ),
    });
    authz
}

/// `timeout`: as for [`introspection_gateway`].
fn forward_auth_gateway(up: &Upstream, authz: &str, admin: u16, timeout: &str) -> Gateway {
    Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}}}
auth:
  external:
    - name: authz
      url: http://{authz}/check
      timeout: {timeout}
      forward_headers: [authorization]
      upstream_headers: [x-user-id]
      consumer_header: x-user-name
      cache: {{ttl: 60s, key: ["header:authorization"]}}
    - name: authz-body
      url: http://{authz}/check-body
      forward_headers: [authorization]
      forward_body: {{max: 16B}}
      timeout: {timeout}
    - name: authz-open
      url: http://{authz}/check
      forward_headers: [authorization]
      timeout: {timeout}
      on_failure: allow
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - {{name: orders, match: {{path_prefix: /orders}}, upstream: api, access: {{providers: [authz]}}}}
  - {{name: uploads, match: {{path_prefix: /uploads}}, upstream: api, access: {{providers: [authz-body]}}}}
  - {{name: catalog, match: {{path_prefix: /catalog}}, upstream: api, access: {{providers: [authz-open]}}}}
"#,
        up = up.addr
    ))
}

#[test]
fn forward_auth_admits_copies_headers_and_relays_refusals() {
    let up = Upstream::start("api");
    let authz = authz_server();
    let admin = free_port();
    let gw = forward_auth_gateway(&up, &authz.addr.to_string(), admin, "60s");

    // Admitted: the service saw the canonical path, the client's address and the listed
    // header; the upstream sees the copied header and the consumer, never a client's own.
    let r = send(
        "GET",
        &gw.url("/orders/x/../7?full=1"),
        &[
            ("authorization", "Bearer let-me-in"),
            ("x-user-id", "forged"),
            ("cookie", "a=b"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let call = authz
        .last("/check/orders/7")
        .expect("the service was asked");
    assert_eq!(call.method, "GET");
    assert_eq!(call.target, "/check/orders/7?full=1");
    assert_eq!(call.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(call.header("x-forwarded-method"), Some("GET"));
    assert_eq!(call.header("x-forwarded-uri"), Some("/orders/7?full=1"));
    assert_eq!(
        call.header("cookie"),
        None,
        "only the listed headers go to the service"
    );
    let seen = up.last("/orders/7").unwrap();
    assert_eq!(seen.header("x-user-id"), Some("u-42"));
    assert_eq!(seen.header("x-consumer"), Some("ada"));
    assert_eq!(seen.header("x-internal"), None);
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(k, _)| k == "x-user-id")
            .count(),
        1,
        "the client's copy was removed"
    );

    // Kept by the Authorization header: nine more requests, still one call.
    for _ in 0..9 {
        assert_eq!(
            send(
                "GET",
                &gw.url("/orders/8"),
                &[("authorization", "Bearer let-me-in")]
            )
            .status,
            200
        );
    }
    assert_eq!(authz.count(), 1, "one call for ten alike requests");

    // Refused: the service's status, selected headers and body, as it gave them.
    let r = send(
        "GET",
        &gw.url("/orders/7"),
        &[("authorization", "Bearer nope"), ("x-user-id", "u-1")],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.body, r#"{"error":"who are you"}"#);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"authz\""));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-internal"), None);
    let r = send(
        "GET",
        &gw.url("/orders/7"),
        &[("authorization", "Bearer login")],
    );
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://login.test/?next=1"));
    // A refusal's body is passed on up to 64 KiB.
    let r = send(
        "GET",
        &gw.url("/orders/7"),
        &[("authorization", "Bearer chatty")],
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.body.len(), 64 << 10);
    assert_eq!(up.count(), 10, "refused requests never reached the service");
    assert_eq!(
        metric(
            admin,
            "portico_policy_refusals_total",
            "reason=\"external_refused\""
        ),
        3.0
    );
}

#[test]
fn forward_auth_sends_the_body_it_decides_on_and_the_upstream_gets_it_too() {
    let up = Upstream::start("api");
    let authz = authz_server();
    let gw = forward_auth_gateway(&up, &authz.addr.to_string(), free_port(), "60s");
    let r = send_body(
        "POST",
        &gw.url("/uploads"),
        &[
            ("authorization", "Bearer let-me-in"),
            ("content-type", "text/plain"),
        ],
        "hello, service",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let call = authz.last("/check-body/uploads").unwrap();
    assert_eq!(call.method, "POST");
    assert_eq!(call.body, "hello, service");
    assert_eq!(call.header("content-type"), Some("text/plain"));
    assert_eq!(up.last("/uploads").unwrap().body, "hello, service");
    // Over forward_body.max: refused before the service or the upstream sees it.
    let r = send_body(
        "POST",
        &gw.url("/uploads"),
        &[("authorization", "Bearer let-me-in")],
        "a body of more than sixteen bytes",
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(authz.count(), 1);
    assert_eq!(up.count(), 1);
}

#[test]
fn forward_auth_stampede_makes_one_call() {
    let up = Upstream::start("api");
    let authz = authz_server();
    let admin = free_port();
    let gw = forward_auth_gateway(&up, &authz.addr.to_string(), admin, "60s");
    let auth = [("authorization", "Bearer let-me-in")];
    let statuses = stampede(&authz, admin, "authz", &gw.url("/orders/1"), &auth);
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        100,
        "{statuses:?}"
    );
    assert_eq!(authz.count(), 1, "one call for 100 concurrent requests");
    assert_eq!(up.count(), 100);
}

#[test]
fn forward_auth_slow_or_down_answers_503_or_lets_through_as_configured() {
    let up = Upstream::start("api");
    let authz = authz_server();
    let admin = free_port();
    let gw = forward_auth_gateway(&up, &authz.addr.to_string(), admin, "2s");
    let gate = Gate::new(usize::MAX);
    authz.set_gate(gate.clone());
    let r = send(
        "GET",
        &gw.url("/orders/1"),
        &[("authorization", "Bearer let-me-in")],
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        eventually(Duration::from_secs(30), || authz.count() == 1),
        "the service had the call and had not answered"
    );
    let r = send(
        "GET",
        &gw.url("/catalog"),
        &[("authorization", "Bearer let-me-in")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    gate.open();
    assert_eq!(
        metric(admin, "portico_auth_calls_total", "outcome=\"timeout\""),
        2.0
    );
    authz.stop();
    assert_eq!(
        send(
            "GET",
            &gw.url("/orders/1"),
            &[("authorization", "Bearer let-me-in")]
        )
        .status,
        503
    );
    assert_eq!(send("GET", &gw.url("/catalog"), &[]).status, 200);
    assert_eq!(
        metric(admin, "portico_auth_calls_total", "outcome=\"error\""),
        2.0
    );
    assert_eq!(up.count(), 2, "only the lenient route let requests through");
}

// ---------------------------------------------------------------------------------------
// OpenID Connect discovery

fn jwk_set(keys: &[(&str, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, file)| {
            let pem = std::fs::read(fixture(file)).unwrap();
            let key = EncodingKey::from_rsa_pem(&pem).unwrap();
            let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            jwk.common.key_algorithm = None;
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn token(alg: Algorithm, kid: &str, file: &str, iss: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    let claims = json!({"sub": "ada", "iss": iss, "aud": "portico", "exp": now() + 600});
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(file)).unwrap()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// An OpenID provider: its discovery document (naming `issuer`), and the key set it
/// points to, which the test can rotate.
fn issuer_server(keys: Arc<Mutex<String>>, doc_issuer: Arc<Mutex<Option<String>>>) -> Upstream {
    let idp = Upstream::start("oidc");
    let own = format!("http://{}", idp.addr);
    idp.respond_with(move |r| match r.target.as_str() {
        "/.well-known/openid-configuration" => {
            let issuer = doc_issuer
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| own.clone());
            let doc = json!({
                "issuer": issuer,
                "jwks_uri": format!("{own}/keys/current"),
                "id_token_signing_alg_values_supported": ["RS256"],
                "authorization_endpoint": format!("{own}/authorize"),
            });
            Script::new(
                200,
                &[("content-type", "application/json")],
                &doc.to_string(),
            )
        }
        "/keys/current" => Script::new(
            200,
            &[("content-type", "application/json")],
            &keys.lock().unwrap(),
        ),
        _ => Script::new(404, &[], ""),
    });
    idp
}

#[test]
fn discovery_finds_the_keys_follows_rotation_and_keeps_the_last_good_document() {
    let keys = Arc::new(Mutex::new(jwk_set(&[("k1", "rsa_private.pem")])));
    let doc_issuer = Arc::new(Mutex::new(None));
    let idp = issuer_server(keys.clone(), doc_issuer.clone());
    let issuer = format!("http://{}", idp.addr);
    let up = Upstream::start("api");
    let gw = Gateway::start(&format!(
        r#"auth:
  jwt:
    - name: oidc
      issuer: {issuer}
      issuer_discovery: true
      audiences: [portico]
      algorithms: [RS256, RS384]
      keys: {{refresh_interval: 1h, min_refetch_interval: 1s}}
    - name: impostor
      issuer: https://someone-else.test
      discovery_url: {issuer}/.well-known/openid-configuration
      algorithms: [RS256]
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - {{name: me, match: {{path_prefix: /me}}, upstream: api, access: {{providers: [oidc]}}}}
  - {{name: other, match: {{path_prefix: /other}}, upstream: api, access: {{providers: [impostor]}}}}
"#,
        up = up.addr
    ));
    let get = |path: &str, t: &str| {
        send(
            "GET",
            &gw.url(path),
            &[("authorization", &format!("Bearer {t}"))],
        )
    };
    let k1 = token(Algorithm::RS256, "k1", "rsa_private.pem", &issuer);
    assert!(eventually(Duration::from_secs(30), || get("/me", &k1)
        .status
        == 200));
    assert!(idp.count_path("/.well-known/openid-configuration") >= 1);
    assert!(idp.count_path("/keys/current") >= 1);

    // Only what the document advertises (RS256) of the configured algorithms is accepted.
    let rs384 = token(Algorithm::RS384, "k1", "rsa_private.pem", &issuer);
    let r = get("/me", &rs384);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("algorithm is not accepted"), "{}", r.body);

    // A document naming another issuer is refused: its keys are never used.
    let r = get(
        "/other",
        &token(
            Algorithm::RS256,
            "k1",
            "rsa_private.pem",
            "https://someone-else.test",
        ),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(gw.log_text().contains("names issuer"), "{}", gw.log_text());

    // The issuer rotates to k2: a token naming it makes the gateway look again.
    *keys.lock().unwrap() = jwk_set(&[("k2", "rsa2_private.pem")]);
    let k2 = token(Algorithm::RS256, "k2", "rsa2_private.pem", &issuer);
    assert!(eventually(Duration::from_secs(30), || get("/me", &k2)
        .status
        == 200));
    assert_eq!(get("/me", &k1).status, 401, "k1 is gone");

    // The document now names someone else: the last good one (and its key set URL) stay.
    *doc_issuer.lock().unwrap() = Some("https://evil.test".into());
    let docs = idp.count_path("/.well-known/openid-configuration");
    let sets = idp.count_path("/keys/current");
    let k3 = token(Algorithm::RS256, "k3", "rsa_private.pem", &issuer);
    assert!(eventually(Duration::from_secs(30), || {
        assert_eq!(get("/me", &k3).status, 401, "nobody has k3");
        idp.count_path("/.well-known/openid-configuration") > docs
    }));
    assert!(
        eventually(Duration::from_secs(30), || idp.count_path("/keys/current")
            > sets),
        "keys are still fetched from the last good document's jwks_uri"
    );
    assert_eq!(
        get("/me", &k2).status,
        200,
        "still served by the last good document"
    );
    assert!(gw.log_text().contains("keeping the last good document"));

    // The provider goes down altogether: the keys it last gave still verify.
    idp.stop();
    let k4 = token(Algorithm::RS256, "k4", "rsa_private.pem", &issuer);
    assert_eq!(
        get("/me", &k4).status,
        401,
        "an unknown kid makes it look, and fail"
    );
    assert_eq!(get("/me", &k2).status, 200);
}

// ---------------------------------------------------------------------------------------
// Client certificates

#[test]
fn client_certificates_name_consumers_by_subject_or_san() {
    let ca = TestCa::new("edge");
    let (cert, key) = ca.issue("site", &["site.test"]);
    let clients = TestCa::new("clients");
    let billing = clients.issue_client("billing", "billing", &[]);
    let reports = clients.issue_client("reports", "reports-7", &["spiffe://acme/reports"]);
    let stranger = clients.issue_client("stranger", "stranger", &[]);
    let outsiders = TestCa::new("outsiders");
    let outsider = outsiders.issue_client("outsider", "billing", &[]);
    let up = Upstream::start("api");
    let (optional, required) = (free_port(), free_port());
    let client_ca = clients.ca_path();
    let _gw = Gateway::start(&format!(
        r#"  - address: 127.0.0.1:{optional}
    tls: {{certificates: [{{cert: {cert}, key: {key}}}], client_auth: {{ca: {client_ca}}}}}
  - address: 127.0.0.1:{required}
    tls: {{certificates: [{{cert: {cert}, key: {key}}}], client_auth: {{ca: {client_ca}, required: true}}}}
consumers:
  - name: billing
    groups: [finance]
    certificates: [{{subject: "CN=billing, O=Acme"}}]
  - name: reports
    certificates: [{{san: "spiffe://acme/reports"}}]
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - {{name: ledger, match: {{path_prefix: /ledger}}, upstream: api, access: {{providers: [client_cert], groups: [finance]}}}}
  - {{name: api, upstream: api, access: {{providers: [client_cert]}}}}
"#,
        up = up.addr
    ));
    let at = |port: u16, who: Option<&(String, String)>, path: &str| {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        https1_as(
            addr,
            "site.test",
            &ca.ca_path(),
            who.map(|(c, k)| (c.as_str(), k.as_str())),
            "GET",
            path,
            &[("x-consumer", "forged")],
        )
    };
    let r = at(optional, Some(&billing), "/ledger").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last("/ledger").unwrap().header("x-consumer"),
        Some("billing")
    );
    let r = at(optional, Some(&reports), "/status").unwrap();
    assert_eq!(r.status, 200, "by SAN: {}", r.text());
    assert_eq!(
        up.last("/status").unwrap().header("x-consumer"),
        Some("reports")
    );
    let r = at(optional, Some(&reports), "/ledger").unwrap();
    assert_eq!(r.status, 403, "not in finance: {}", r.text());
    let r = at(optional, Some(&stranger), "/status").unwrap();
    assert_eq!(r.status, 401);
    assert!(r.text().contains("names no consumer"), "{}", r.text());
    let r = at(optional, None, "/status").unwrap();
    assert_eq!(r.status, 401, "no certificate is missing credentials");
    assert!(r.text().contains("credentials are required"));
    // A certificate from another authority never completes the handshake, even with the
    // right name; on the required listener, neither does a client without one.
    assert!(at(optional, Some(&outsider), "/status").is_err());
    assert!(at(required, None, "/status").is_err());
    let r = at(required, Some(&billing), "/ledger").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 3);
}

#[test]
fn client_auth_is_turned_on_by_a_reload() {
    let ca = TestCa::new("edge");
    let (cert, key) = ca.issue("site", &["site.test"]);
    let clients = TestCa::new("clients");
    let billing = clients.issue_client("billing", "billing", &["billing.acme.test"]);
    let up = Upstream::start("api");
    let port = free_port();
    let rest = format!(
        r#"consumers:
  - {{name: billing, certificates: [{{san: billing.acme.test}}]}}
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - {{name: api, upstream: api, access: {{providers: [client_cert]}}}}
"#,
        up = up.addr
    );
    let listener = |client_auth: &str| {
        format!(
            "  - address: 127.0.0.1:{port}\n    tls: {{certificates: [{{cert: {cert}, key: {key}}}]{client_auth}}}\n"
        )
    };
    let gw = Gateway::start(&format!("{}{rest}", listener("")));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let ask = || {
        https1_as(
            addr,
            "site.test",
            &ca.ca_path(),
            Some((billing.0.as_str(), billing.1.as_str())),
            "GET",
            "/",
            &[],
        )
        .map(|r| r.status)
    };
    assert_eq!(ask(), Ok(401), "no certificate is asked for yet");

    // The same listener, now asking for client certificates: no restart.
    let text = std::fs::read_to_string(&gw.conf).unwrap();
    let with = text.replace(
        &listener(""),
        &listener(&format!(", client_auth: {{ca: {}}}", clients.ca_path())),
    );
    assert_ne!(text, with);
    std::fs::write(&gw.conf, with).unwrap();
    signal(gw.pid(), "HUP");
    assert!(eventually(Duration::from_secs(30), || ask() == Ok(200)));
    assert_eq!(up.last("/").unwrap().header("x-consumer"), Some("billing"));
}
