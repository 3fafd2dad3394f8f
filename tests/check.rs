//! `portico check` builds what `run` builds and reports every fault with its YAML path and
//! line; `run` refuses a bad config the same way.

mod common;
use common::*;
use std::process::Command;

/// Run `portico SUBCOMMAND -c FILE` on `text`; stdout and stderr with the file's path
/// replaced by `FILE`.
fn portico_on(subcommand: &str, text: &str) -> (std::process::Output, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(portico_bin())
        .args([subcommand, "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let name = file.display().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).replace(&name, "FILE");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&name, "FILE");
    (out, stdout, stderr)
}

fn check(text: &str) -> (bool, String) {
    let (out, stdout, _) = portico_on("check", text);
    (out.status.success(), stdout)
}

const BROKEN: &str = "\
server:
  threads: 2
listeners:
  - address: 127.0.0.1:8080
upstreams:
  - name: orders
    targets: []
  - name: orders
    targets: [{address: 127.0.0.1:9000}]
  - name: users
    targets: [{address: 127.0.0.1:9001}]
    health_check:
      type: tcp
      interval: 0s
  - name: slow
    targets: [{address: 127.0.0.1:9002}]
    timeouts:
      connect: 10 seconds
routes:
  - name: a
    match:
      path_regex: \"^/(unclosed\"
    upstream: orders
  - name: b
    upstream: order
  - name: c
    upstream: users
    methds: [GET]
  - name: a
    upstream: slow
";

#[test]
fn every_fault_is_reported_with_path_and_line() {
    let (ok, out) = check(BROKEN);
    assert!(!ok, "{out}");
    let expected = [
        "FILE:7: upstreams[0].targets: the pool is empty",
        "FILE:8: upstreams[1].name: upstream name \"orders\" is used twice",
        "FILE:14: upstreams[2].health_check.interval: must be longer than 0s",
        "FILE:18: upstreams[3].timeouts.connect: duration \"10 seconds\" has unknown unit",
        "FILE:22: routes[0].match.path_regex: invalid regex",
        "FILE:25: routes[1].upstream: no upstream named \"order\"",
        "FILE:28: routes[2].methds: unknown field `methds`",
        "FILE:29: routes[3].name: route name \"a\" is used twice",
    ];
    for e in expected {
        assert!(out.contains(e), "missing {e:?} in:\n{out}");
    }
    assert_eq!(out.lines().count(), expected.len(), "{out}");
    // A route naming an upstream that failed to parse is not reported a second time.
    assert!(!out.contains("no upstream named \"slow\""), "{out}");
}

#[test]
fn syntax_errors_and_unknown_sections_have_lines() {
    let (ok, out) = check("listeners:\n  - address: [unclosed\n");
    assert!(!ok);
    assert!(out.starts_with("FILE:"), "{out}");
    assert!(out.contains("not valid YAML"), "{out}");

    let (ok, out) = check("listeners:\n  - address: 127.0.0.1:1\nroutse: []\n");
    assert!(!ok);
    assert!(
        out.contains("FILE:3: routse: unknown field `routse`"),
        "{out}"
    );
}

#[test]
fn impossible_values_are_faults() {
    let (ok, out) = check(
        "\
listeners:
  - address: localhost
upstreams:
  - name: u
    algorithm: consistent_hash
    targets: [{address: 127.0.0.1:1, weight: 0}]
    health_check: {type: http, path: nope, expected_status: 200-299, interval: 1s, timeout: 2s}
  - name: v
    targets: [{address: 127.0.0.1:2}]
    health_check: {type: http, expected_status: 600}
routes:
  - name: r
    match: {path_prefix: api, methods: [GOT IT], hosts: [\"http://x.com\"]}
    upstream: u
    strip_prefix: true
    rewrite: /x
",
    );
    assert!(!ok);
    for e in [
        "FILE:2: listeners[0].address: \"localhost\" is not an IP:PORT address",
        "FILE:5: upstreams[0].algorithm: consistent_hash needs a hash_key",
        "FILE:6: upstreams[0].targets[0].weight: weight 0 is not between 1 and 100",
        "upstreams[0].health_check.timeout: timeout 2s is longer than the interval 1s",
        "upstreams[0].health_check.path: \"nope\" is not a path",
        "FILE:10: upstreams[1].health_check.expected_status: \"600\" is not an HTTP status",
        "routes[0].match.hosts[0]: \"http://x.com\" is not a host name",
        "routes[0].match.path_prefix: \"api\" does not start with /",
        "routes[0].match.methods[0]: \"GOT IT\" is not an HTTP method",
        "FILE:16: routes[0].rewrite: use either strip_prefix or rewrite",
    ] {
        assert!(out.contains(e), "missing {e:?} in:\n{out}");
    }
}

#[test]
fn shipped_configs_pass() {
    // The demo's config names a certificate the demo makes at start: it is checked the
    // way `portico demo` loads it.
    let demo = portico::demo::prepare("conf/demo.yaml", portico::demo::DEMO_YAML, true);
    assert!(
        demo.is_ok(),
        "{}",
        demo.err().map(|e| e.to_string()).unwrap_or_default()
    );
    // And as a newcomer runs it, from the project's directory.
    for f in ["conf/portico.yaml", "conf/demo.yaml"] {
        let out = Command::new(portico_bin())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["check", "-c", f])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{f}: {text}");
        assert!(text.starts_with("OK"), "{f}: {text}");
    }
}

#[test]
fn run_refuses_a_bad_config_like_check() {
    let (out, _, err) = portico_on("run", BROKEN);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("routes[1].upstream: no upstream named \"order\""),
        "{err}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = Command::new(portico_bin())
        .args(["check", "-c", "/nonexistent/portico.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/nonexistent/portico.yaml: cannot read the config file"),
        "{text}"
    );
}

#[test]
fn auth_faults_are_reported() {
    let (ok, out) = check(
        "\
listeners:
  - address: 127.0.0.1:8080
consumers:
  - name: app
    api_keys: [not-a-digest]
  - name: app
auth:
  jwt:
    - name: short
      algorithms: [HS256, none]
      keys: {secret: too-short}
    - name: pki
      algorithms: [RS256]
      keys: {jwks_url: ftp://id.example.com/jwks.json, jwks_ca_file: /nonexistent/ca.pem}
    - name: nokeys
      algorithms: [ES256]
      keys: {}
upstreams:
  - name: u
    targets: [{address: 127.0.0.1:1}]
routes:
  - name: r
    upstream: u
    access: {providers: [corp, api_key]}
  - name: s
    upstream: u
    access: {scopes: [x]}
",
    );
    assert!(!ok);
    for e in [
        "FILE:5: consumers[0].api_keys[0]: not a SHA-256 digest",
        "FILE:6: consumers[1].name: consumer name \"app\" is used twice",
        "FILE:10: auth.jwt[0].algorithms[1]: \"none\" is not accepted",
        "FILE:11: auth.jwt[0].keys.secret: an HMAC secret needs at least 32 bytes",
        "FILE:14: auth.jwt[1].keys.jwks_url: \"ftp://id.example.com/jwks.json\" is not an http:// or https:// URL",
        "FILE:14: auth.jwt[1].keys.jwks_ca_file: cannot use /nonexistent/ca.pem as a CA file",
        "auth.jwt[2].keys: give at least one of secret, pem_files, jwks_file, jwks_url",
        "routes[0].access.providers[0]: no provider named \"corp\"",
        "routes[1].access.providers: list the accepted providers",
    ] {
        assert!(out.contains(e), "missing {e:?} in:\n{out}");
    }
}

#[test]
fn a_provider_that_fails_to_parse_is_reported_once() {
    let (ok, out) = check(
        "\
listeners:
  - address: 127.0.0.1:8080
auth:
  jwt:
    - name: corp
      algorithms: [RS256]
      keys: {jwks_url: http://127.0.0.1:1/jwks.json}
      token_from: [{body: token}]
upstreams:
  - name: u
    targets: [{address: 127.0.0.1:1}]
routes:
  - name: r
    upstream: u
    access: {providers: [corp]}
",
    );
    assert!(!ok);
    assert!(out.contains("FILE:8: auth.jwt[0].token_from[0]"), "{out}");
    assert!(out.contains("unknown token source \"body\""), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn rate_limit_faults_are_reported() {
    let (ok, out) = check(
        "\
listeners:
  - address: 127.0.0.1:8080
upstreams:
  - name: u
    targets: [{address: 127.0.0.1:1}]
routes:
  - name: r
    upstream: u
    rate_limits:
      - {name: a, requests: 0, per: 1s}
      - {name: a, requests: 5, per: 0s, burst: 0}
      - {name: b, requests: 5, per: 1s, key: \"path:id\"}
      - {name: c, requests: 5, per: 1s, key: cookie}
",
    );
    assert!(!ok);
    for e in [
        "FILE:10: routes[0].rate_limits[0].requests: must be at least 1",
        "FILE:11: routes[0].rate_limits[1].name: limit name \"a\" is used twice",
        "FILE:11: routes[0].rate_limits[1].per: must be at least 1ms",
        "FILE:11: routes[0].rate_limits[1].burst: must be at least 1",
        "FILE:12: routes[0].rate_limits[2].key: path:id needs a match.path_regex",
        "FILE:13: routes[0].rate_limits[3].key: unknown key \"cookie\"",
    ] {
        assert!(out.contains(e), "missing {e:?} in:\n{out}");
    }
}

#[test]
fn auth_integration_faults_have_paths() {
    let (ok, out) = check_config(
        "\
listeners:
  - address: 127.0.0.1:8080
  - address: 127.0.0.1:8443
    tls:
      certificates: [{cert: /nonexistent/c.pem, key: /nonexistent/k.pem}]
      client_auth: {ca: /nonexistent/clients.pem}
consumers:
  - name: billing
    certificates: [{}]
auth:
  jwt:
    - name: sso
      issuer_discovery: true
      algorithms: [RS256]
  introspection:
    - name: opaque
      endpoint: ftp://idp.example.com/introspect
      client_id: portico
      client_secret_file: /nonexistent/secret
      timeout: 0s
    - name: client_cert
      endpoint: https://idp.example.com/introspect
      client_id: portico
      client_secret_file: /nonexistent/secret
  external:
    - name: authz
      url: http://authz.example.com/check?x=1
      forward_body: {max: 1MiB}
      client_headers: [content-type, transfer-encoding]
      cache: {ttl: 30s, key: [bogus, \"header:bad header\"]}
upstreams:
  - name: u
    targets: [{address: 127.0.0.1:1}]
routes:
  - name: r
    upstream: u
    access: {providers: [opaque, authz, nobody]}
",
    );
    assert!(!ok);
    for e in [
        "listeners[1].tls.client_auth.ca: ",
        "consumers[0].certificates[0]: give subject or san",
        "auth.jwt[0].issuer: discovery needs the issuer",
        "auth.introspection[0].endpoint: \"ftp://idp.example.com/introspect\" is not an http:// or https:// URL",
        "auth.introspection[0].client_secret_file: cannot read",
        "auth.introspection[0].timeout: ",
        "auth.introspection[1].name: a provider needs a name other than \"api_key\" and \"client_cert\"",
        "auth.external[0].url: the request's own query is sent",
        "auth.external[0].forward_body.max: between 1 byte and 64KiB",
        "auth.external[0].cache.key[0]: \"bogus\" is not a key part",
        "auth.external[0].client_headers[1]: \"transfer-encoding\" frames the message",
        "auth.external[0].cache.key[1]: \"bad header\" is not a valid header name",
        "routes[0].access.providers[2]: no provider named \"nobody\"",
    ] {
        assert!(out.contains(e), "missing {e:?} in:\n{out}");
    }
}
