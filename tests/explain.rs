//! Explaining a request to an operator: `portico explain` on a config file, the admin's
//! `POST /explain` on the running config, and the `Portico-Explain` header a request gets
//! when it carries the debug header with the admin token. None of them sends anything
//! upstream that the request would not.

mod common;
use common::*;
use std::process::Command;

const TOKEN: &str = "an-admin-token-of-some-length";

fn config(up: &Upstream, admin: u16) -> String {
    let key = portico::policy::auth::api_key::hash_key("key-a");
    format!(
        r#"admin: {{address: 127.0.0.1:{admin}, token: {TOKEN}, debug_header: portico-debug}}
consumers:
  - {{name: app-a, api_keys: ["{key}"]}}
upstreams:
  - {{name: users, targets: [{{address: "{up}"}}]}}
routes:
  - name: admin-api
    match: {{hosts: [admin.example.com], path_prefix: /v1}}
    upstream: users
  - name: users
    match: {{path_prefix: /v1/users, methods: [GET]}}
    upstream: users
    rewrite: /users
    access: {{providers: [api_key]}}
    rate_limits: [{{name: per-client, requests: 10, per: 1s, key: client_ip}}]
    cache: {{default_ttl: 30s}}
  - name: orders
    match: {{path_exact: /v1/orders}}
    upstream: users
  - name: catalog
    match: {{path_prefix: /v1/catalog}}
    upstream: users
    cache: {{default_ttl: 30s}}
"#,
        up = up.addr
    )
}

fn explain(conf: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(portico_bin())
        .args(["explain", "-c"])
        .arg(conf)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_cli_explains_routes_policies_target_and_cache_key() {
    let up = Upstream::start("users");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("portico.yaml");
    std::fs::write(
        &conf,
        format!(
            "listeners:\n  - address: 127.0.0.1:{}\n{}",
            free_port(),
            config(&up, free_port())
        ),
    )
    .unwrap();
    let text = explain(
        &conf,
        &[
            "GET https://api.example.com/v1/x/../users/7?b=2&a=1",
            "-H",
            "x-api-key: key-a",
        ],
    );
    for expected in [
        "canonical:  GET /v1/users/7?b=2&a=1  (host api.example.com)",
        "- admin-api                host api.example.com is not one of admin.example.com",
        "+ users                    matches",
        "- orders                   path is not /v1/orders",
        "chosen:     users",
        "1. access: credentials from one of: api_key",
        "2. rate_limit: limits: per-client",
        &format!("upstream:   users [{}]", up.addr),
        &format!("target:     {}", up.addr),
        "upstream path: /users/7",
        "cache key:  api.example.com/v1/users/7?b=2&a=1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let text = explain(&conf, &["DELETE http://api.example.com/v1/users/7"]);
    assert!(
        text.contains("- users                    method DELETE is not one of GET"),
        "{text}"
    );
    assert!(
        text.contains("answer:     405: the path allows GET"),
        "{text}"
    );
    let text = explain(&conf, &["GET http://api.example.com/nowhere"]);
    assert!(text.contains("answer:     404: no route matches"), "{text}");
    let text = explain(&conf, &["GET http://api.example.com/v1/%2e%2e/../admin"]);
    assert!(text.contains("refused:    400"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&explain(
        &conf,
        &["--json", "GET http://admin.example.com/v1/users/7"],
    ))
    .unwrap();
    assert_eq!(json["chosen"], "admin-api", "{json}");
    assert_eq!(json["routes"][0]["matches"], true);
    assert_eq!(up.count(), 0, "nothing was sent upstream");
}

#[test]
fn the_admin_explains_on_the_running_config_with_the_token_only() {
    let up = Upstream::start("users");
    let admin = free_port();
    let _gw = Gateway::start(&config(&up, admin));
    let url = format!("http://127.0.0.1:{admin}/explain");
    let body =
        r#"{"request": "GET http://api.example.com/v1/users/7", "headers": ["x-api-key: key-a"]}"#;
    assert_eq!(send_body("POST", &url, &[], body).status, 401);
    assert_eq!(
        send_body(
            "POST",
            &url,
            &[("authorization", "Bearer wrong-token-wrong-token")],
            body
        )
        .status,
        403
    );
    let auth = format!("Bearer {TOKEN}");
    let r = send_body("POST", &url, &[("authorization", auth.as_str())], body);
    assert_eq!(r.status, 200, "{r:?}");
    let e = r.json();
    assert_eq!(e["chosen"], "users");
    assert_eq!(e["canonical"], "/v1/users/7");
    assert_eq!(e["policies"][0]["policy"], "access");
    assert_eq!(e["upstream"]["picks"], up.addr.to_string());
    assert_eq!(e["upstream"]["targets"][0]["healthy"], true);
    let bad = send_body(
        "POST",
        &url,
        &[("authorization", auth.as_str())],
        r#"{"request": "nonsense"}"#,
    );
    assert_eq!(bad.status, 400);
    assert_eq!(up.count(), 0, "nothing was sent upstream");
}

#[test]
fn the_debug_header_with_the_token_gets_portico_explain_and_never_goes_upstream() {
    let up = Upstream::start("users");
    let admin = free_port();
    let gw = Gateway::start(&config(&up, admin));
    let url = gw.url("/v1/users/7");

    let r = send(
        "GET",
        &url,
        &[("x-api-key", "key-a"), ("portico-debug", TOKEN)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let explained = r.header("portico-explain").expect("explained").to_string();
    assert!(
        explained.starts_with("route=users; policies=access:continue:"),
        "{explained}"
    );
    assert!(explained.contains(",rate_limit:continue:"), "{explained}");
    assert!(explained.contains("; cache=miss:"), "{explained}");
    assert!(
        explained.contains(&format!("; attempt=1:{}:200:connect=", up.addr)),
        "{explained}"
    );
    assert!(explained.contains("; total="), "{explained}");
    let seen = up.last("/users/7").unwrap();
    assert_eq!(
        seen.header("portico-debug"),
        None,
        "the token never leaves the gateway"
    );

    // A cache hit makes no attempt.
    for expected in ["miss", "hit"] {
        let r = send("GET", &gw.url("/v1/catalog"), &[("portico-debug", TOKEN)]);
        let explained = r.header("portico-explain").unwrap();
        assert!(
            explained.contains(&format!("; cache={expected}:")),
            "{explained}"
        );
        assert_eq!(
            explained.contains("attempt="),
            expected == "miss",
            "{explained}"
        );
    }

    // Refused by a policy, and not routed at all: explained too.
    let r = send("GET", &url, &[("portico-debug", TOKEN)]);
    assert_eq!(r.status, 401);
    let explained = r.header("portico-explain").unwrap();
    assert!(
        explained.starts_with("route=users; policies=access:missing_credentials:"),
        "{explained}"
    );
    let r = send("GET", &gw.url("/nowhere"), &[("portico-debug", TOKEN)]);
    assert_eq!(r.status, 404);
    assert!(r.header("portico-explain").unwrap().starts_with("route=-"));

    // Without the right token: nothing explained, and the header is still dropped.
    let before = up.count();
    let r = send(
        "GET",
        &gw.url("/v1/orders"),
        &[("portico-debug", "a-guess-at-the-token")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("portico-explain"), None);
    assert_eq!(up.count(), before + 1);
    assert_eq!(up.last("/v1/orders").unwrap().header("portico-debug"), None);
    let r = send("GET", &gw.url("/v1/orders"), &[]);
    assert_eq!(r.header("portico-explain"), None);
}
