//! HTTPS on listeners (SNI, ALPN, HSTS, redirects, certificate reload), TLS and mutual TLS
//! to upstreams, HTTP/2 end to end — through the real gateway, with certificates made by a
//! throwaway CA.

mod common;
use common::tls::{handshake, https1, TestCa, H2};
use common::*;
use std::net::SocketAddr;
use std::time::Duration;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn https_listener_picks_certificates_by_sni_and_offers_http2() {
    let ca = TestCa::new("edge");
    let (a_cert, a_key) = ca.issue("a", &["a.test"]);
    let (b_cert, b_key) = ca.issue("b", &["*.b.test", "b.test"]);
    let up = Upstream::start("app");
    let tls_port = free_port();
    let h1_port = free_port();
    let gw = Gateway::start(&format!(
        r#"  - address: 127.0.0.1:{tls_port}
    redirect_https: false
    tls:
      certificates: [{{cert: {a_cert}, key: {a_key}}}, {{cert: {b_cert}, key: {b_key}}}]
      hsts: "max-age=63072000; includeSubDomains"
  - address: 127.0.0.1:{h1_port}
    tls: {{certificates: [{{cert: {a_cert}, key: {a_key}}}], http2: false}}
upstreams:
  - {{name: app, targets: [{{address: "{}"}}]}}
routes:
  - {{name: all, upstream: app}}
"#,
        up.addr
    ));
    let ca_file = ca.ca_path();
    let at = local(tls_port);
    // SNI picks the certificate; an unknown name gets the first one.
    assert_eq!(
        handshake(at, "a.test", &ca_file, &[]).unwrap().names,
        ["a.test"]
    );
    assert_eq!(
        handshake(at, "x.b.test", &ca_file, &[]).unwrap().names,
        ["*.b.test", "b.test"]
    );
    assert_eq!(
        handshake(at, "b.test", &ca_file, &[]).unwrap().names,
        ["*.b.test", "b.test"]
    );
    let unknown = handshake(at, "other.test", &ca_file, &[]);
    assert!(
        unknown.is_err(),
        "the default certificate does not name other.test: {unknown:?}"
    );
    // ALPN: h2 when offered, HTTP/1.1 otherwise, and never h2 where it is turned off.
    let h = handshake(at, "a.test", &ca_file, &["h2", "http/1.1"]).unwrap();
    assert_eq!(h.alpn.as_deref(), Some("h2"));
    assert!(h.version.contains("TLSv1_3"), "{}", h.version);
    assert_eq!(
        handshake(at, "a.test", &ca_file, &["http/1.1"])
            .unwrap()
            .alpn
            .as_deref(),
        Some("http/1.1")
    );
    assert_eq!(
        handshake(local(h1_port), "a.test", &ca_file, &["h2", "http/1.1"])
            .unwrap()
            .alpn
            .as_deref(),
        Some("http/1.1")
    );

    // HTTP/1.1 over TLS: proxied, X-Forwarded-Proto https, HSTS on the response.
    let r = https1(at, "a.test", &ca_file, "GET", "/hello?x=1", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains")
    );
    let seen = up.last("/hello").unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // HTTP/2: several streams on one connection.
    let mut h2 = H2::tls(at, "b.test", &ca_file).unwrap();
    for i in 0..3 {
        let r = h2
            .request("GET", "b.test", &format!("/h2/{i}"), &[], b"")
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=63072000; includeSubDomains")
        );
    }
    let post = h2
        .request(
            "POST",
            "b.test",
            "/h2/post",
            &[("content-type", "application/json")],
            b"{\"a\":1}",
        )
        .unwrap();
    assert_eq!(post.status, 200);
    assert_eq!(up.last("/h2/post").unwrap().body, "{\"a\":1}");
    // The plain listener sends no HSTS.
    assert!(get(&gw.url("/plain"))
        .header("strict-transport-security")
        .is_none());
}

#[test]
fn plain_http_is_redirected_to_https() {
    let ca = TestCa::new("edge");
    let (cert, key) = ca.issue("site", &["site.test"]);
    let up = Upstream::start("app");
    let tls_port = free_port();
    let redirect_port = free_port();
    let gw = Gateway::start(&format!(
        r#"  - {{address: "127.0.0.1:{tls_port}", tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}}}
  - {{address: "127.0.0.1:{redirect_port}", redirect_https: true}}
upstreams:
  - {{name: app, targets: [{{address: "{}"}}]}}
routes:
  - {{name: secure, match: {{path_prefix: /account}}, upstream: app, redirect_https: true}}
  - {{name: all, upstream: app}}
"#,
        up.addr
    ));
    let redirecting = format!("http://127.0.0.1:{redirect_port}");
    let r = send(
        "GET",
        &format!("{redirecting}/a/b?c=d"),
        &[("host", "site.test")],
    );
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").unwrap(),
        format!("https://site.test:{tls_port}/a/b?c=d")
    );
    let r = send_body(
        "POST",
        &format!("{redirecting}/form"),
        &[("host", "site.test:8080")],
        "x=1",
    );
    assert_eq!(r.status, 308, "the method and body must be kept");
    assert_eq!(
        r.header("location").unwrap(),
        format!("https://site.test:{tls_port}/form")
    );
    // ACME HTTP-01 challenges stay on plain HTTP.
    let r = send(
        "GET",
        &format!("{redirecting}/.well-known/acme-challenge/tok"),
        &[("host", "site.test")],
    );
    assert_eq!(r.status, 200);
    // On the ordinary listener only the route that asks for it redirects.
    assert_eq!(get(&gw.url("/public")).status, 200);
    let r = send("GET", &gw.url("/account"), &[("host", "site.test")]);
    assert_eq!(r.status, 301);
    // Over HTTPS the same route is served.
    let r = https1(
        local(tls_port),
        "site.test",
        &ca.ca_path(),
        "GET",
        "/account",
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.count_path("/account"), 1);
}

#[test]
fn certificates_are_replaced_by_a_reload() {
    let ca = TestCa::new("edge");
    let (cert, key) = ca.issue("site", &["site.test"]);
    let up = Upstream::start("app");
    let tls_port = free_port();
    let admin = free_port();
    let gw = Gateway::start(&format!(
        r#"  - {{address: "127.0.0.1:{tls_port}", tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}}}
admin: {{address: 127.0.0.1:{admin}}}
upstreams:
  - {{name: app, targets: [{{address: "{}"}}]}}
routes:
  - {{name: all, upstream: app}}
"#,
        up.addr
    ));
    let at = local(tls_port);
    let ca_file = ca.ca_path();
    assert_eq!(
        handshake(at, "site.test", &ca_file, &[]).unwrap().names,
        ["site.test"]
    );
    let status = admin_get(admin, "/status").json();
    assert_eq!(
        status["tls"][0]["certificates"][0]["names"][0], "site.test",
        "{status}"
    );

    // Renewed in place (as certbot does), then SIGHUP: new handshakes get the new one.
    let (new_cert, new_key) = ca.issue("renewed", &["site.test", "www.site.test"]);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    signal(gw.pid(), "HUP");
    assert!(eventually(Duration::from_secs(5), || {
        handshake(at, "www.site.test", &ca_file, &[]).is_ok_and(|h| h.names.len() == 2)
    }));
    assert_eq!(
        https1(at, "www.site.test", &ca_file, "GET", "/", &[])
            .unwrap()
            .status,
        200
    );

    // A key that does not fit is refused with its path; the renewed certificate stays.
    let (_, other_key) = ca.issue("other", &["other.test"]);
    std::fs::copy(&other_key, &key).unwrap();
    signal(gw.pid(), "HUP");
    assert!(eventually(Duration::from_secs(5), || gw
        .log_text()
        .contains("listeners[1].tls.certificates[0].key")));
    assert_eq!(
        handshake(at, "www.site.test", &ca_file, &[])
            .unwrap()
            .names
            .len(),
        2
    );
}

#[test]
fn upstream_tls_verifies_the_target_and_can_present_a_client_certificate() {
    let ca = TestCa::new("internal");
    let stranger = TestCa::new("stranger");
    let clients = TestCa::new("clients");
    let (cert, key) = ca.issue("svc", &["svc.internal", "127.0.0.1"]);
    let (client_cert, client_key) = clients.issue("gateway", &["gateway.internal"]);
    let open = Upstream::start_tls_with("open", &cert, &key, None);
    let strict = Upstream::start_tls_with("strict", &cert, &key, Some(&clients.ca_path()));
    let ca_file = ca.ca_path();
    let config = format!(
        r#"upstreams:
  - {{name: verified, targets: [{{address: "{o}"}}], tls: {{sni: svc.internal, ca: "{ca_file}"}}}}
  - {{name: by-ip, targets: [{{address: "{o}"}}], tls: {{ca: "{ca_file}"}}}}
  - {{name: wrong-ca, targets: [{{address: "{o}"}}], tls: {{sni: svc.internal, ca: "{other}"}}}}
  - {{name: wrong-name, targets: [{{address: "{o}"}}], tls: {{sni: elsewhere.internal, ca: "{ca_file}"}}}}
  - {{name: unverified, targets: [{{address: "{o}"}}], tls: {{sni: svc.internal, ca: "{other}", verify: false}}}}
  - {{name: mtls, targets: [{{address: "{s}"}}], tls: {{sni: svc.internal, ca: "{ca_file}", client_cert: "{client_cert}", client_key: "{client_key}"}}}}
  - {{name: no-client-cert, targets: [{{address: "{s}"}}], tls: {{sni: svc.internal, ca: "{ca_file}"}}}}
routes:
"#,
        o = open.addr,
        s = strict.addr,
        other = stranger.ca_path(),
    ) + &[
        "verified",
        "by-ip",
        "wrong-ca",
        "wrong-name",
        "unverified",
        "mtls",
        "no-client-cert",
    ]
    .iter()
    .map(|n| format!("  - {{name: {n}, match: {{path_prefix: /{n}}}, upstream: {n}}}\n"))
    .collect::<String>();
    let gw = Gateway::start(&config);
    for (route, expected) in [
        ("verified", 200),
        ("by-ip", 200),
        ("wrong-ca", 502),
        ("wrong-name", 502),
        ("unverified", 200),
        ("mtls", 200),
        ("no-client-cert", 502),
    ] {
        let r = get(&gw.url(&format!("/{route}")));
        assert_eq!(r.status, expected, "{route}: {}", r.body);
        if expected == 502 {
            assert!(
                r.json()["error"].as_str().unwrap().contains(route),
                "{}",
                r.body
            );
        }
    }
    assert_eq!(strict.count_path("/mtls"), 1);
    assert_eq!(open.count_path("/wrong-ca"), 0);
}

#[test]
fn tls_settings_are_checked_with_their_paths() {
    let ca = TestCa::new("edge");
    let (cert, _) = ca.issue("a", &["a.test"]);
    let (_, other_key) = ca.issue("b", &["b.test"]);
    let (ok, text) = check_config(&format!(
        r#"listeners:
  - {{address: 127.0.0.1:1, tls: {{certificates: [{{cert: /nonexistent.pem, key: {other_key}}}, {{cert: {cert}, key: {other_key}}}], hsts: "bad\nvalue"}}}}
  - {{address: 127.0.0.1:2, tls: {{certificates: []}}, redirect_https: true}}
upstreams:
  - {{name: u, targets: [{{address: 127.0.0.1:3}}], tls: {{ca: /nonexistent-ca.pem, client_cert: {cert}}}}}
routes: [{{name: r, upstream: u}}]
"#
    ));
    assert!(!ok);
    for path in [
        "listeners[0].tls.certificates[0].cert",
        "listeners[0].tls.certificates[1].key",
        "listeners[1].tls.certificates",
        "listeners[1].redirect_https",
        "upstreams[0].tls.ca",
        "upstreams[0].tls.client_key",
    ] {
        assert!(text.contains(path), "{path} missing in:\n{text}");
    }
    let (ok, text) = check_config(
        "listeners: [{address: 127.0.0.1:1, redirect_https: true}]\nupstreams: [{name: u, targets: [{address: 127.0.0.1:3}]}]\nroutes: [{name: r, upstream: u, redirect_https: true}]\n",
    );
    assert!(
        !ok && text.contains("routes[0].redirect_https") && text.contains("no TLS listener"),
        "{text}"
    );
}

#[test]
fn check_warns_of_expired_certificates_but_accepts_them() {
    let ca = TestCa::new("edge");
    let (cert, key) = ca.issue_expired("old", &["old.test"]);
    let (ok, text) = check_config(&format!(
        "listeners: [{{address: 127.0.0.1:1, tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}}}]\nupstreams: [{{name: u, targets: [{{address: 127.0.0.1:3}}]}}]\nroutes: [{{name: r, upstream: u}}]\n"
    ));
    // Refusing it would take every other route down with it at the next start.
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: listener 127.0.0.1:1: certificate")
            && text.contains("(old.test) has expired"),
        "{text}"
    );
}

#[test]
fn a_rotated_upstream_ca_is_picked_up_by_a_reload() {
    let old_ca = TestCa::new("old");
    let new_ca = TestCa::new("new");
    let (old_cert, old_key) = old_ca.issue("svc-old", &["localhost"]);
    let (new_cert, new_key) = new_ca.issue("svc-new", &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::copy(old_ca.ca_path(), &ca_file).unwrap();
    let svc = Upstream::start_tls_with("svc", &old_cert, &old_key, None);
    let port = svc.addr.port();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - name: svc
    targets: [{{address: "127.0.0.1:{port}"}}]
    keepalive: false
    tls: {{sni: localhost, ca: {ca}}}
routes:
  - name: r
    upstream: svc
"#,
        ca = ca_file.display()
    ));
    assert_eq!(get(&gw.url("/x")).status, 200);
    // The service moves to a certificate of the new CA, the CA file is rotated in place:
    // the config text does not change.
    svc.stop();
    let _svc = Upstream::start_tls_on("svc", port, &new_cert, &new_key);
    assert_eq!(
        get(&gw.url("/x")).status,
        502,
        "the old CA refuses the new certificate"
    );
    std::fs::copy(new_ca.ca_path(), &ca_file).unwrap();
    signal(gw.pid(), "HUP");
    assert!(
        eventually(Duration::from_secs(10), || get(&gw.url("/x")).status == 200),
        "{}",
        gw.log_text()
    );
}
