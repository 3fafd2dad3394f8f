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
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.yaml");
    std::fs::write(
        &conf,
        "listeners: [{address: \"127.0.0.1:1\"}]\nupstreams: [{name: app, targets: [{address: \"127.0.0.1:2\"}]}]\nroutes:\n  - name: api\n    upstream: app\n    transform:\n      request:\n        headers:\n          set: {X-A: \"$nonsense\"}\n",
    )
    .unwrap();
    let out = std::process::Command::new(portico_bin())
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains(
            "bad.yaml:9: routes[0].transform.request.headers.set.X-A: unknown variable $nonsense"
        ),
        "{text}"
    );
}
