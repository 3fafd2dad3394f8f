//! Request/response transforms and edge policies through the real gateway.

mod common;
use common::*;

fn gateway_with(up: &Upstream, route_extra: &str, top: &str) -> Gateway {
    let key = portico::policy::auth::api_key::hash_key("key-a");
    Gateway::start(&format!(
        r#"{top}
consumers:
  - {{name: app-a, api_keys: ["{key}"]}}
upstreams:
  - name: app
    targets: [{{address: "{up}"}}]
routes:
  - name: api
    upstream: app
    access: {{providers: [api_key], anonymous: true}}
{route_extra}
"#,
        up = up.addr
    ))
}

#[test]
fn header_query_and_path_transforms_fill_in_variables() {
    let up = Upstream::start("app");
    let gw = gateway_with(
        &up,
        r#"    transform:
      request:
        path: {regex: "^/v1/(?P<rest>.*)$", replace: "/internal/$rest"}
        query:
          set: {source: "gw $route"}
          remove: [debug]
          rename: {q: search}
          add: {user: "$header.x-user"}
        headers:
          set: {X-Caller: "$consumer@$client_ip", X-Route: "$route", X-Path: "$path", X-Page: "$query.page"}
          add: {X-Tag: "one"}
          remove: [X-Secret]
          rename: {X-Old: X-New}
      response:
        headers:
          set: {X-Served-Route: "$route", X-Request: "$request_id"}
          remove: [X-Served-By]
          rename: {Keep-Alive: X-Was-Keep-Alive}"#,
        "",
    );
    let r = send(
        "GET",
        &gw.url("/v1/items?q=shoes&debug=1&page=2"),
        &[
            ("x-api-key", "key-a"),
            ("x-user", "ada lovelace"),
            ("x-secret", "s"),
            ("x-old", "o"),
            ("x-request-id", "rid-123"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up
        .last("/internal/items")
        .expect("path rewritten with a named capture");
    assert_eq!(
        seen.target,
        "/internal/items?search=shoes&page=2&source=gw%20api&user=ada%20lovelace"
    );
    assert_eq!(seen.header("x-caller"), Some("app-a@127.0.0.1"));
    assert_eq!(seen.header("x-route"), Some("api"));
    assert_eq!(seen.header("x-path"), Some("/v1/items"));
    assert_eq!(seen.header("x-page"), Some("2"));
    assert_eq!(seen.header("x-tag"), Some("one"));
    assert_eq!(seen.header("x-secret"), None);
    assert_eq!(seen.header("x-old"), None);
    assert_eq!(seen.header("x-new"), Some("o"));
    assert_eq!(r.header("x-served-route"), Some("api"));
    assert_eq!(r.header("x-request"), Some("rid-123"));
    assert_eq!(r.header("x-served-by"), None);
    // Variables without a value render empty; a header that renders empty is left out.
    let _ = send("GET", &gw.url("/v1/x"), &[]);
    assert_eq!(
        up.last("/internal/x").unwrap().header("x-caller"),
        Some("@127.0.0.1")
    );
    assert_eq!(up.last("/internal/x").unwrap().header("x-page"), None);
}

#[test]
fn an_unknown_variable_is_a_config_error_with_its_path() {
    let (ok, text) = check_config(
        "listeners: [{address: \"127.0.0.1:1\"}]\nupstreams: [{name: app, targets: [{address: \"127.0.0.1:2\"}]}]\nroutes:\n  - name: api\n    upstream: app\n    transform:\n      request:\n        headers:\n          set: {X-A: \"$nonsense\"}\n",
    );
    assert!(!ok);
    assert!(
        text.contains(
            "bad.yaml:9: routes[0].transform.request.headers.set.X-A: unknown variable $nonsense"
        ),
        "{text}"
    );
}

#[test]
fn cors_preflights_are_answered_and_actual_requests_get_headers() {
    let up = Upstream::start("app");
    let gw = gateway_with(
        &up,
        r#"    match: {methods: [GET, PUT]}
    cors:
      allow_origins: ["https://app.example.com"]
      allow_methods: [GET, PUT]
      allow_headers: [content-type, x-api-key]
      expose_headers: [x-request-id]
      allow_credentials: true
      max_age: 5m"#,
        "",
    );
    let pre = |origin: &str, method: &str, headers: &str| {
        raw(
            gw.addr,
            &format!(
                "OPTIONS /things HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: {headers}\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let ok = pre("https://app.example.com", "PUT", "Content-Type, X-Api-Key");
    assert!(ok.starts_with("HTTP/1.1 204"), "{ok}");
    let lower = ok.to_ascii_lowercase();
    assert!(
        lower.contains("access-control-allow-origin: https://app.example.com"),
        "{ok}"
    );
    assert!(
        lower.contains("access-control-allow-methods: get, put"),
        "{ok}"
    );
    assert!(
        lower.contains("access-control-allow-headers: content-type, x-api-key"),
        "{ok}"
    );
    assert!(
        lower.contains("access-control-allow-credentials: true"),
        "{ok}"
    );
    assert!(lower.contains("access-control-max-age: 300"), "{ok}");
    assert_eq!(up.count(), 0, "preflights never reach the upstream");
    assert!(pre("https://evil.example", "PUT", "").starts_with("HTTP/1.1 403"));
    // No route takes DELETE here: the OPTIONS request gets the route table's 405.
    assert!(pre("https://app.example.com", "DELETE", "").starts_with("HTTP/1.1 405"));
    assert!(pre("https://app.example.com", "GET", "x-other").starts_with("HTTP/1.1 403"));
    let actual = send(
        "GET",
        &gw.url("/things"),
        &[("origin", "https://app.example.com")],
    );
    assert_eq!(
        actual.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        actual.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(actual.header("vary"), Some("Origin"));
    let other = send(
        "GET",
        &gw.url("/things"),
        &[("origin", "https://evil.example")],
    );
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
}

#[test]
fn oversized_request_bodies_get_413() {
    let up = Upstream::start("app");
    let gw = gateway_with(&up, "    max_request_body: 1KiB", "");
    let small = send_body("POST", &gw.url("/u"), &[], &"a".repeat(1024));
    assert_eq!(small.status, 200);
    let big = send_body("POST", &gw.url("/u"), &[], &"a".repeat(1025));
    assert_eq!(big.status, 413, "{big:?}");
    assert_eq!(big.json()["status"], 413);
    assert_eq!(
        up.count_path("/u"),
        1,
        "a declared oversize body never goes upstream"
    );
    // Chunked: counted as it streams.
    let chunk = "a".repeat(600);
    let r = raw(
        gw.addr,
        &format!("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
}

#[test]
fn ip_allow_and_deny_lists_use_the_client_address() {
    let up = Upstream::start("app");
    let deny = gateway_with(&up, "    ip_deny: [127.0.0.0/8]", "");
    let r = get(&deny.url("/x"));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["status"], 403);
    let allow = gateway_with(&up, "    ip_allow: [10.0.0.0/8, 127.0.0.1]", "");
    assert_eq!(get(&allow.url("/x")).status, 200);
    // Behind a trusted proxy the client's own address decides.
    let proxied = gateway_with(
        &up,
        "    ip_allow: [10.1.0.0/16]",
        "trusted_proxies: [127.0.0.1]",
    );
    assert_eq!(
        send(
            "GET",
            &proxied.url("/x"),
            &[("x-forwarded-for", "10.1.2.3")]
        )
        .status,
        200
    );
    assert_eq!(
        send(
            "GET",
            &proxied.url("/x"),
            &[("x-forwarded-for", "10.2.0.1")]
        )
        .status,
        403
    );
    assert_eq!(get(&proxied.url("/x")).status, 403);
    assert_eq!(up.count_path("/x"), 2);
}

/// Status, lower-case headers and raw body bytes of one request on a fresh connection.
fn raw_bytes(addr: std::net::SocketAddr, req: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    (head, out[end..].to_vec())
}

#[test]
fn compression_follows_accept_encoding_type_and_size() {
    use std::io::Read;
    let up = Upstream::start("app");
    let json = format!("{{\"items\": [{}]}}", vec!["\"abcdefghij\""; 300].join(","));
    up.script("/json", 200, &[("content-type", "application/json")], &json);
    up.script("/tiny", 200, &[("content-type", "application/json")], "{}");
    up.script(
        "/png",
        200,
        &[("content-type", "image/png")],
        &"x".repeat(5000),
    );
    let gw = gateway_with(&up, "    compression: {level: 5, min_size: 1KiB}", "");
    let req = |path: &str, enc: &str| {
        let ae = if enc.is_empty() {
            String::new()
        } else {
            format!("Accept-Encoding: {enc}\r\n")
        };
        raw_bytes(
            gw.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{ae}Connection: close\r\n\r\n"),
        )
    };
    let (head, body) = req("/json", "gzip");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    };
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, json);
    assert!(body.len() < json.len() / 4);
    for enc in ["br", "zstd"] {
        let (head, _) = req("/json", enc);
        assert!(
            head.contains(&format!("content-encoding: {enc}")),
            "{enc}: {head}"
        );
    }
    let (head, body) = req("/json", "");
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(body, json.as_bytes());
    let (head, _) = req("/tiny", "gzip");
    assert!(!head.contains("content-encoding"), "under min_size: {head}");
    let (head, _) = req("/png", "gzip");
    assert!(
        !head.contains("content-encoding"),
        "not a listed type: {head}"
    );
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16)
                .unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[test]
fn json_bodies_are_edited_both_ways_and_bounded() {
    let up = Upstream::start("app");
    up.script(
        "/users/1",
        200,
        &[("content-type", "application/json; charset=utf-8")],
        r#"{"id":1,"name":"Ada","password_hash":"x","profile":{"city":"London"}}"#,
    );
    up.script(
        "/chunky",
        200,
        &[
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
        ],
        r#"{"password_hash":"x","ok":true}"#,
    );
    up.script(
        "/packed",
        200,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        "pretend-gzip",
    );
    up.script(
        "/text",
        200,
        &[("content-type", "text/plain")],
        "{\"password_hash\": 1}",
    );
    up.script(
        "/huge",
        200,
        &[("content-type", "application/json")],
        &format!("{{\"a\":\"{}\"}}", "x".repeat(3000)),
    );
    let gw = gateway_with(
        &up,
        r#"    transform:
      max_body: 2KiB
      request:
        json:
          set: {/meta/via: gateway}
          remove: [/debug]
          rename: {/user: /username}
      response:
        json:
          remove: [/password_hash]
          rename: {/profile/city: /city}
          add: {/api_version: 2}"#,
        "",
    );
    let r = get(&gw.url("/users/1"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"id": 1, "name": "Ada", "profile": {}, "city": "London", "api_version": 2})
    );
    assert_eq!(
        up.last("/users/1").unwrap().header("accept-encoding"),
        Some("identity")
    );
    assert_eq!(
        get(&gw.url("/chunky")).json(),
        serde_json::json!({"ok": true, "api_version": 2})
    );
    // Request body, sent chunked by the client.
    let body = r#"{"user":"ada","debug":true,"n":1}"#;
    let sent = raw(
        gw.addr,
        &format!(
            "POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ),
    );
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
    let seen: serde_json::Value = serde_json::from_str(&up.last("/users").unwrap().body).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({"username": "ada", "n": 1, "meta": {"via": "gateway"}})
    );
    // Content-Length requests too; the upstream gets a correct framing.
    let r = send_body(
        "POST",
        &gw.url("/users"),
        &[("content-type", "application/json")],
        r#"{"user":"bob"}"#,
    );
    assert_eq!(r.status, 200);
    let seen = up.last("/users").unwrap();
    assert_eq!(seen.body, r#"{"meta":{"via":"gateway"},"username":"bob"}"#);
    // Compressed and non-JSON bodies pass untouched.
    assert_eq!(get(&gw.url("/packed")).body, "pretend-gzip");
    assert_eq!(get(&gw.url("/text")).body, "{\"password_hash\": 1}");
    let plain = send_body(
        "POST",
        &gw.url("/t"),
        &[("content-type", "text/plain")],
        "{\"debug\":1}",
    );
    assert_eq!(plain.status, 200);
    assert_eq!(up.last("/t").unwrap().body, "{\"debug\":1}");
    // Over max_body: 413 for a request, 502 for a response.
    let big = format!("{{\"a\":\"{}\"}}", "y".repeat(3000));
    let r = send_body(
        "POST",
        &gw.url("/users"),
        &[("content-type", "application/json")],
        &big,
    );
    assert_eq!(r.status, 413, "{r:?}");
    let r = get(&gw.url("/huge"));
    assert_eq!(r.status, 502, "{r:?}");
}

#[test]
fn jwt_claims_fill_header_variables() {
    let up = Upstream::start("app");
    let secret = "a-test-secret-that-is-long-enough-for-hs256!";
    let gw = Gateway::start(&format!(
        r#"auth:
  jwt:
    - name: corp
      algorithms: [HS256]
      keys: {{secret: "{secret}"}}
upstreams:
  - name: app
    targets: [{{address: "{up}"}}]
routes:
  - name: api
    upstream: app
    access: {{providers: [corp]}}
    transform:
      request:
        headers:
          set: {{X-Tenant: "$jwt.claim.tenant", X-Level: "$jwt.claim.level", X-Sub: "$consumer"}}
"#,
        up = up.addr
    ));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({"sub": "ada", "tenant": "acme", "level": 3, "exp": exp});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let r = send(
        "GET",
        &gw.url("/c"),
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = up.last("/c").unwrap();
    assert_eq!(seen.header("x-tenant"), Some("acme"));
    assert_eq!(seen.header("x-level"), Some("3"));
    assert_eq!(seen.header("x-sub"), Some("ada"));
}
