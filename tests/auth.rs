//! Authentication and authorization through the real gateway: JWT (every algorithm family,
//! every way a token can be wrong), JWKS rotation, API keys, scopes and groups, and
//! identity headers a client cannot forge.

mod common;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// RFC 7518 §3.2: HS512 needs a secret of at least 64 bytes.
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs512-which-needs-64-bytes!!";
const PARTNER_KEY: &str = "partner-key-1";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "ada", "iss": "https://id.test", "aud": "portico",
        "exp": now() + 600, "nbf": now() - 10, "email": "ada@example.com",
        "scope": "orders:read",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn key_for(alg: Algorithm, file: &str) -> EncodingKey {
    let pem = || std::fs::read(fixture(file)).unwrap();
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(SECRET.as_bytes()).unwrap()
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem()).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem()).unwrap(),
    }
}

fn sign_with(header: Header, file: &str, claims: &Value) -> String {
    let key = key_for(header.alg, file);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn sign(alg: Algorithm, file: &str, claims: &Value) -> String {
    sign_with(Header::new(alg), file, claims)
}

fn hmac(claims: &Value) -> String {
    sign(Algorithm::HS256, "rsa_public.pem", claims)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn config(up: &Upstream, jwks: &Upstream, key_digest: &str) -> String {
    format!(
        r#"
consumers:
  - name: ada
    groups: [staff]
  - name: partner
    groups: [partners]
    metadata: {{contact: partner@example.com}}
    api_keys: ["sha256:{key_digest}"]
auth:
  jwt:
    - name: hmac
      algorithms: [HS256, HS384, HS512]
      issuer: https://id.test
      audiences: [portico]
      keys: {{secret: "{SECRET}"}}
      forward_claims: {{sub: x-user-id, email: x-user-email}}
      strip_authorization: true
    - name: pki
      algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]
      issuer: https://id.test
      audiences: [portico]
      required_claims: [email]
      keys:
        pem_files: ["{rsa}", "{ec256}", "{ec384}", "{ed}"]
    - name: elsewhere
      algorithms: [HS256]
      keys: {{secret: "{SECRET}"}}
      token_from: [{{header: x-token}}, {{cookie: session}}, {{query: access_token}}]
    - name: rotating
      algorithms: [RS256]
      keys:
        jwks_url: http://{jwks}/keys.json
        refresh_interval: 1h
        min_refetch_interval: 100ms
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
routes:
  - {{name: jwt, match: {{path_prefix: /jwt}}, upstream: up, access: {{providers: [hmac, pki]}}}}
  - {{name: pki, match: {{path_prefix: /pki}}, upstream: up, access: {{providers: [pki]}}}}
  - {{name: scoped, match: {{path_prefix: /scoped}}, upstream: up, access: {{providers: [hmac], scopes: [orders:write]}}}}
  - {{name: staff, match: {{path_prefix: /staff}}, upstream: up, access: {{providers: [hmac, api_key], groups: [staff]}}}}
  - {{name: partners, match: {{path_prefix: /partners}}, upstream: up, access: {{providers: [api_key], consumers: [partner]}}}}
  - {{name: rotating, match: {{path_prefix: /rot}}, upstream: up, access: {{providers: [rotating]}}}}
  - {{name: open, match: {{path_prefix: /open}}, upstream: up, access: {{providers: [hmac], anonymous: true}}}}
  - {{name: elsewhere, match: {{path_prefix: /elsewhere}}, upstream: up, access: {{providers: [elsewhere]}}}}
  - {{name: public, upstream: up}}
"#,
        rsa = fixture("rsa_public.pem"),
        ec256 = fixture("ec256_public.pem"),
        ec384 = fixture("ec384_public.pem"),
        ed = fixture("ed25519_public.pem"),
        jwks = jwks.addr,
        up = up.addr,
    )
}

struct Setup {
    up: Upstream,
    jwks: Upstream,
    gw: Gateway,
}

fn jwk_set(keys: &[(&str, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, file)| {
            let mut jwk =
                Jwk::from_encoding_key(&key_for(Algorithm::RS256, file), Algorithm::RS256).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn setup() -> Setup {
    let up = Upstream::start("up");
    let jwks = Upstream::start("jwks");
    jwks.set_body(&jwk_set(&[("k1", "rsa_private.pem")]));
    let digest = portico::policy::auth::api_key::hash_key(PARTNER_KEY);
    let gw = Gateway::start(&config(&up, &jwks, &digest));
    Setup { up, jwks, gw }
}

fn call(s: &Setup, path: &str, headers: &[(&str, &str)]) -> Resp {
    send("GET", &s.gw.url(path), headers)
}

fn assert_401(r: &Resp, description: &str) {
    assert_eq!(r.status, 401, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(
        challenge.contains(description),
        "{challenge} lacks {description:?}"
    );
    assert_eq!(r.json()["status"], 401);
}

#[test]
fn valid_tokens_of_every_algorithm_family_pass() {
    let s = setup();
    let c = claims(json!({}));
    let cases = [
        (Algorithm::HS256, "unused"),
        (Algorithm::HS384, "unused"),
        (Algorithm::HS512, "unused"),
        (Algorithm::RS256, "rsa_private.pem"),
        (Algorithm::RS384, "rsa_private.pem"),
        (Algorithm::RS512, "rsa_private.pem"),
        (Algorithm::PS256, "rsa_private.pem"),
        (Algorithm::PS512, "rsa_private.pem"),
        (Algorithm::ES256, "ec256_private.pem"),
        (Algorithm::ES384, "ec384_private.pem"),
        (Algorithm::EdDSA, "ed25519_private.pem"),
    ];
    for (alg, file) in cases {
        let token = sign(alg, file, &c);
        let r = call(&s, "/jwt", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{alg:?}: {r:?}");
    }
    let seen = s.up.requests();
    assert_eq!(seen.len(), cases.len());
    assert!(seen.iter().all(|r| r.header("x-consumer") == Some("ada")));
}

#[test]
fn bad_tokens_get_401_and_never_reach_the_upstream() {
    let s = setup();
    let rs = |c: &Value| sign(Algorithm::RS256, "rsa_private.pem", c);
    let good = rs(&claims(json!({})));
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = B64.encode(claims(json!({"sub": "admin"})).to_string());
    let tampered = parts.join(".");
    let unsigned = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims(json!({})).to_string())
    );
    // HS256 with the RSA public key as the HMAC secret: the classic key confusion.
    let public_pem = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    let mut unknown_kid = Header::new(Algorithm::RS256);
    unknown_kid.kid = Some("nope".into());
    let cases = [
        (
            "expired",
            rs(&claims(json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "not yet valid",
            rs(&claims(json!({"nbf": now() + 600}))),
            "not valid yet",
        ),
        (
            "wrong issuer",
            rs(&claims(json!({"iss": "https://evil.test"}))),
            "issuer",
        ),
        (
            "wrong audience",
            rs(&claims(json!({"aud": "someone-else"}))),
            "audience",
        ),
        (
            "missing required claim",
            rs(&claims(json!({"email": null}))),
            "required claim",
        ),
        (
            "missing exp",
            rs(&claims(json!({"exp": null}))),
            "required claim",
        ),
        ("tampered payload", tampered, "signature"),
        (
            "other key",
            sign(Algorithm::RS256, "rsa2_private.pem", &claims(json!({}))),
            "signature",
        ),
        ("alg none", unsigned, "malformed"),
        ("HS256 with the RSA public key", confused, "algorithm"),
        (
            "a kid none of its keys has, signed by another key",
            sign_with(unknown_kid.clone(), "rsa2_private.pem", &claims(json!({}))),
            "signature",
        ),
        ("garbage", "not.a.token".to_string(), "malformed"),
    ];
    for (what, token, description) in cases {
        let r = call(&s, "/pki", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_401(&r, description);
    }
    assert_eq!(s.up.count(), 0, "a rejected request reached the upstream");
    // Identity providers put a kid in every token: keys configured without one (PEM files,
    // secrets) verify a token whatever kid it names.
    let with_kid = sign_with(unknown_kid, "rsa_private.pem", &claims(json!({})));
    let r = call(&s, "/pki", &[("authorization", &bearer(&with_kid))]);
    assert_eq!(r.status, 200, "{r:?}");
    let mut hs_kid = Header::new(Algorithm::HS256);
    hs_kid.kid = Some("any".into());
    let r = call(
        &s,
        "/jwt",
        &[(
            "authorization",
            &bearer(&sign_with(hs_kid, "", &claims(json!({})))),
        )],
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn keys_named_by_the_token_are_never_fetched_or_trusted() {
    let s = setup();
    let attacker = Upstream::start("attacker");
    let jwk = Jwk::from_encoding_key(
        &key_for(Algorithm::RS256, "rsa2_private.pem"),
        Algorithm::RS256,
    )
    .unwrap();
    attacker.set_body(
        &serde_json::to_string(&JwkSet {
            keys: vec![jwk.clone()],
        })
        .unwrap(),
    );
    let url = format!("http://{}/keys.json", attacker.addr);
    let c = claims(json!({}));
    let mut with_jku = Header::new(Algorithm::RS256);
    with_jku.jku = Some(url.clone());
    with_jku.kid = Some("k-evil".into());
    let mut with_x5u = Header::new(Algorithm::RS256);
    with_x5u.x5u = Some(url.clone());
    let mut with_jwk = Header::new(Algorithm::RS256);
    with_jwk.jwk = Some(jwk);
    for (path, header) in [
        ("/pki", with_jku.clone()),
        ("/pki", with_x5u),
        ("/pki", with_jwk),
        ("/rot", with_jku),
    ] {
        let token = sign_with(header, "rsa2_private.pem", &c);
        let r = call(&s, path, &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 401, "{r:?}");
    }
    assert_eq!(
        attacker.count(),
        0,
        "the gateway fetched a URL named by a token"
    );
    assert_eq!(s.up.count(), 0);
}

#[test]
fn missing_credentials_get_a_plain_challenge_and_anonymous_routes_stay_open() {
    let s = setup();
    let r = call(&s, "/jwt", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );
    assert_eq!(r.json()["error"], "credentials are required");
    let r = call(&s, "/partners", &[]);
    assert_eq!(
        r.header("www-authenticate"),
        Some("ApiKey realm=\"portico\"")
    );

    assert_eq!(call(&s, "/open", &[]).status, 200);
    let token = hmac(&claims(json!({})));
    assert_eq!(
        call(&s, "/open", &[("authorization", &bearer(&token))]).status,
        200
    );
    let bad = call(&s, "/open", &[("authorization", "Bearer x.y.z")]);
    assert_eq!(
        bad.status, 401,
        "bad credentials fail even where anonymous is allowed"
    );
    let seen = s.up.requests();
    assert_eq!(seen[0].header("x-consumer"), None);
    assert_eq!(seen[1].header("x-consumer"), Some("ada"));
}

#[test]
fn api_keys_identify_their_consumer() {
    let s = setup();
    let r = call(&s, "/partners", &[("x-api-key", PARTNER_KEY)]);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &s.up.requests()[0];
    assert_eq!(seen.header("x-consumer"), Some("partner"));
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the key itself is not forwarded"
    );

    let r = call(&s, "/partners", &[("x-api-key", "partner-key-2")]);
    assert_401(&r, "API key is not valid");
    // A query parameter is not a key source unless configured.
    let r = call(&s, &format!("/partners?api_key={PARTNER_KEY}"), &[]);
    assert_eq!(r.status, 401);
    assert_eq!(s.up.count(), 1);
}

#[test]
fn scopes_groups_and_consumers_give_403() {
    let s = setup();
    let reader = hmac(&claims(json!({})));
    let writer = hmac(&claims(json!({"scope": "orders:read orders:write"})));
    let writer_scp = hmac(&claims(json!({"scope": null, "scp": ["orders:write"]})));
    let r = call(&s, "/scoped", &[("authorization", &bearer(&reader))]);
    assert_eq!(r.status, 403, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"orders:write\""), "{challenge}");
    assert_eq!(
        call(&s, "/scoped", &[("authorization", &bearer(&writer))]).status,
        200
    );
    assert_eq!(
        call(&s, "/scoped", &[("authorization", &bearer(&writer_scp))]).status,
        200
    );

    // Groups come from the consumer's config entry (ada is staff, partner is not)...
    assert_eq!(
        call(&s, "/staff", &[("authorization", &bearer(&reader))]).status,
        200
    );
    assert_eq!(
        call(&s, "/staff", &[("x-api-key", PARTNER_KEY)]).status,
        403
    );
    // ... or from the token's groups claim.
    let bob = hmac(&claims(json!({"sub": "bob", "groups": ["staff"]})));
    let eve = hmac(&claims(json!({"sub": "eve"})));
    assert_eq!(
        call(&s, "/staff", &[("authorization", &bearer(&bob))]).status,
        200
    );
    let r = call(&s, "/staff", &[("authorization", &bearer(&eve))]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["status"], 403);

    // Only the partner consumer may use /partners.
    let ada = hmac(&claims(json!({})));
    assert_eq!(
        call(&s, "/partners", &[("authorization", &bearer(&ada))]).status,
        401
    );
}

#[test]
fn identity_headers_cannot_be_forged() {
    let s = setup();
    let forged = [
        ("x-consumer", "admin"),
        ("x-user-id", "root"),
        ("x-user-email", "root@example.com"),
    ];
    call(&s, "/public", &forged);
    let token = hmac(&claims(json!({})));
    let mut with_token = forged.to_vec();
    let auth = bearer(&token);
    with_token.push(("authorization", &auth));
    assert_eq!(call(&s, "/jwt", &with_token).status, 200);

    let seen = s.up.requests();
    for h in ["x-consumer", "x-user-id", "x-user-email"] {
        assert_eq!(seen[0].header(h), None, "{h} forged on a public route");
    }
    assert_eq!(seen[1].header("x-consumer"), Some("ada"));
    assert_eq!(seen[1].header("x-user-id"), Some("ada"));
    assert_eq!(seen[1].header("x-user-email"), Some("ada@example.com"));
    assert_eq!(seen[1].header("authorization"), None, "strip_authorization");
}

#[test]
fn jwks_rotation_without_restart_and_outage_keeps_last_keys() {
    let s = setup();
    let with_kid = |kid: &str, file: &str, n: u32| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        sign_with(h, file, &claims(json!({"n": n})))
    };
    let k1 = with_kid("k1", "rsa_private.pem", 1);
    let auth = |t: &str| bearer(t);
    assert!(
        eventually(Duration::from_secs(5), || call(
            &s,
            "/rot",
            &[("authorization", &auth(&k1))]
        )
        .status
            == 200),
        "k1 from the served set was never accepted; log:\n{}",
        s.gw.log_text()
    );

    // Rotate: the endpoint now serves only k2.
    s.jwks.set_body(&jwk_set(&[("k2", "rsa2_private.pem")]));
    std::thread::sleep(Duration::from_millis(150));
    let k2 = with_kid("k2", "rsa2_private.pem", 2);
    let r = call(&s, "/rot", &[("authorization", &auth(&k2))]);
    assert_eq!(r.status, 200, "a new kid triggers a refetch: {r:?}");
    let r = call(&s, "/rot", &[("authorization", &auth(&k1))]);
    assert_eq!(
        r.status, 401,
        "k1 was removed, even though it was verified before: {r:?}"
    );

    // Outage: the endpoint is gone; k2 keeps working, an unknown kid fails cleanly.
    s.jwks.stop();
    std::thread::sleep(Duration::from_millis(150));
    let k3 = with_kid("k3", "rsa_private.pem", 3);
    assert_401(
        &call(&s, "/rot", &[("authorization", &auth(&k3))]),
        "key is unknown",
    );
    let k2b = with_kid("k2", "rsa2_private.pem", 4);
    assert_eq!(
        call(&s, "/rot", &[("authorization", &auth(&k2b))]).status,
        200
    );
    assert!(
        s.gw.log_text().contains("keeping the last good set"),
        "{}",
        s.gw.log_text()
    );
}

#[test]
fn unknown_kids_do_not_stampede_the_jwks_endpoint() {
    let up = Upstream::start("up");
    let jwks = Upstream::start("jwks");
    jwks.set_body(&jwk_set(&[("k1", "rsa_private.pem")]));
    let digest = portico::policy::auth::api_key::hash_key(PARTNER_KEY);
    let gw = Gateway::start(
        &config(&up, &jwks, &digest)
            .replace("min_refetch_interval: 100ms", "min_refetch_interval: 30s"),
    );
    assert!(eventually(Duration::from_secs(5), || jwks.count() >= 1));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let url = gw.url("/rot");
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some(format!("unknown-{i}"));
            let token = sign_with(h, "rsa_private.pem", &claims(json!({})));
            std::thread::spawn(move || {
                send("GET", &url, &[("authorization", &bearer(&token))]).status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 401);
    }
    assert!(
        jwks.count() <= 2,
        "{} fetches for 8 unknown kids",
        jwks.count()
    );
}

#[test]
fn tokens_from_a_header_a_cookie_or_the_query() {
    let s = setup();
    let t = hmac(&claims(json!({})));
    assert_eq!(call(&s, "/elsewhere", &[("x-token", &t)]).status, 200);
    let cookie = format!("theme=dark; session={t}");
    assert_eq!(call(&s, "/elsewhere", &[("cookie", &cookie)]).status, 200);
    assert_eq!(
        call(&s, &format!("/elsewhere?access_token={t}"), &[]).status,
        200
    );
    // This provider does not read the Authorization header.
    assert_eq!(
        call(&s, "/elsewhere", &[("authorization", &bearer(&t))]).status,
        401
    );
}

fn https_jwks_gateway(jwks: &Upstream, ca: Option<&str>) -> (Upstream, Gateway) {
    let up = Upstream::start("up");
    let ca_line = ca.map_or(String::new(), |c| format!("\n        jwks_ca_file: {c}"));
    let gw = Gateway::start(&format!(
        r#"
auth:
  jwt:
    - name: tls
      algorithms: [RS256]
      keys:
        jwks_url: https://localhost:{port}/keys.json{ca_line}
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
routes:
  - {{name: tls, upstream: up, access: {{providers: [tls]}}}}
"#,
        port = jwks.addr.port(),
        up = up.addr,
    ));
    (up, gw)
}

#[test]
fn jwks_over_https_is_verified_against_the_configured_ca() {
    let jwks = Upstream::start_tls("jwks");
    jwks.set_body(&jwk_set(&[("k1", "rsa_private.pem")]));
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    let token = bearer(&sign_with(h, "rsa_private.pem", &claims(json!({}))));

    let (up, gw) = https_jwks_gateway(&jwks, Some(&fixture("test_ca.pem")));
    assert!(
        eventually(Duration::from_secs(5), || send(
            "GET",
            &gw.url("/x"),
            &[("authorization", &token)]
        )
        .status
            == 200),
        "the key set was not fetched over https; log:\n{}",
        gw.log_text()
    );
    assert_eq!(up.count(), 1);
    drop(gw);

    // Without the test CA the server's certificate is not trusted: no keys, only 401s.
    let before = jwks.count();
    let (up, gw) = https_jwks_gateway(&jwks, None);
    assert!(eventually(Duration::from_secs(5), || gw
        .log_text()
        .contains("keeping the last good set")));
    assert_eq!(
        send("GET", &gw.url("/x"), &[("authorization", &token)]).status,
        401
    );
    assert_eq!(up.count(), 0);
    assert_eq!(
        jwks.count(),
        before,
        "no request got through an untrusted TLS handshake"
    );
}

#[test]
fn issuer_and_audience_are_required_when_configured() {
    let s = setup();
    let sign_claims = |c: &Value| sign(Algorithm::HS256, "", c);
    let mut explicit_null = claims(json!({}));
    explicit_null["iss"] = Value::Null;
    let cases = [
        ("no iss", sign_claims(&claims(json!({"iss": null})))),
        ("no aud", sign_claims(&claims(json!({"aud": null})))),
        ("iss: null", sign_claims(&explicit_null)),
    ];
    for (what, token) in cases {
        let r = call(&s, "/jwt", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 401, "{what}: {r:?}");
    }
    let r = call(
        &s,
        "/jwt",
        &[("authorization", &bearer(&sign_claims(&claims(json!({})))))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.up.count(), 1);
}

/// A JWK of `file`'s RSA key with `edit` applied to its JSON.
fn jwk_json(kid: &str, file: &str, edit: impl Fn(&mut Value)) -> Value {
    let mut jwk =
        Jwk::from_encoding_key(&key_for(Algorithm::RS256, file), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    let mut v = serde_json::to_value(&jwk).unwrap();
    edit(&mut v);
    v
}

#[test]
fn keys_that_must_not_verify_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let ec = {
        let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec256_private.pem")).unwrap())
            .unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("ec-off-curve".into());
        let mut v = serde_json::to_value(&jwk).unwrap();
        // Another point's y: (x, y') is not on P-256.
        v["y"] = json!(B64.encode([7u8; 32]));
        v
    };
    let set = json!({"keys": [
        jwk_json("good", "rsa_private.pem", |_| {}),
        jwk_json("e1", "rsa_private.pem", |v| v["e"] = json!("AQ")),
        jwk_json("sign-only", "rsa_private.pem", |v| v["key_ops"] = json!(["sign"])),
        jwk_json("good", "rsa2_private.pem", |_| {}),
        jwk_json("short", "rsa1024_private.pem", |_| {}),
        ec,
    ]});
    let jwks = dir.path().join("keys.json");
    std::fs::write(&jwks, set.to_string()).unwrap();
    let yaml = format!(
        r#"listeners:
  - address: 127.0.0.1:1
auth:
  jwt:
    - name: set
      algorithms: [RS256, ES256]
      keys: {{jwks_file: {jwks}}}
    - name: pem
      algorithms: [RS256, ES256]
      keys: {{pem_files: ["{short}", "{private}", "{ok}"]}}
    - name: hmac
      algorithms: [HS256, HS512]
      keys: {{secret: "forty-bytes-are-enough-for-hs256-only!!!"}}
"#,
        jwks = jwks.display(),
        short = fixture("rsa1024_public.pem"),
        private = fixture("ec256_private.pem"),
        ok = fixture("rsa_public.pem"),
    );
    let (ok, out) = check_config(&yaml);
    assert!(!ok, "{out}");
    for expected in [
        "auth.jwt[0].keys.jwks_file: ",
        "key \"e1\": the RSA exponent is not an odd number of at least 3",
        "key \"sign-only\": its key_ops do not include verify",
        "key \"good\": a second key with this kid",
        "key \"short\": an RSA key of 1024 bits is too short",
        "key \"ec-off-curve\": its point is not on curve P256",
        "auth.jwt[1].keys.pem_files[0]: ",
        "auth.jwt[1].keys.pem_files[1]: ",
        "holds a private key",
        "auth.jwt[2].keys.secret: an HMAC secret needs at least 64 bytes for HS512",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        !out.contains("pem_files[2]"),
        "the sound key is accepted: {out}"
    );
}

#[test]
fn weak_keys_in_a_fetched_set_are_refused_and_the_others_kept() {
    let s = setup();
    let set = json!({"keys": [
        jwk_json("k1", "rsa_private.pem", |_| {}),
        jwk_json("k2", "rsa2_private.pem", |v| v["key_ops"] = json!(["sign"])),
        jwk_json("k3", "rsa1024_private.pem", |_| {}),
    ]});
    s.jwks.set_body(&set.to_string());
    // Past min_refetch_interval (100 ms) since the fetch at start.
    std::thread::sleep(Duration::from_millis(150));
    let token = |kid: &str, file: &str| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        bearer(&sign_with(h, file, &claims(json!({}))))
    };
    // An unknown kid makes the gateway fetch the new set; k2 and k3 in it are refused.
    let r = call(
        &s,
        "/rot",
        &[("authorization", &token("k2", "rsa2_private.pem"))],
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = call(
        &s,
        "/rot",
        &[("authorization", &token("k3", "rsa1024_private.pem"))],
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = call(
        &s,
        "/rot",
        &[("authorization", &token("k1", "rsa_private.pem"))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let log = s.gw.log_text();
    assert!(
        log.contains("key \"k2\": its key_ops do not include verify"),
        "{log}"
    );
    assert!(
        log.contains("key \"k3\": an RSA key of 1024 bits is too short"),
        "{log}"
    );
}

#[test]
fn a_verified_token_is_not_verified_again() {
    let up = Upstream::start("up");
    let admin = free_port();
    let gw = Gateway::start(&format!(
        r#"
admin: {{address: "127.0.0.1:{admin}"}}
auth:
  jwt:
    - {{name: hmac, algorithms: [HS256], keys: {{secret: "{SECRET}"}}}}
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
routes:
  - {{name: r, upstream: up, access: {{providers: [hmac]}}}}
"#,
        up = up.addr
    ));
    let token = bearer(&hmac(&claims(json!({}))));
    let other = bearer(&hmac(&claims(json!({"sub": "grace"}))));
    for _ in 0..5 {
        assert_eq!(
            send("GET", &gw.url("/x"), &[("authorization", &token)]).status,
            200
        );
    }
    assert_eq!(
        send("GET", &gw.url("/x"), &[("authorization", &other)]).status,
        200
    );
    let metrics = admin_get(admin, "/metrics").body;
    assert!(
        metrics.contains("portico_jwt_verifications_total{provider=\"hmac\"} 2"),
        "six requests, two tokens, two verifications:\n{metrics}"
    );
    assert_eq!(up.count(), 6);
}
