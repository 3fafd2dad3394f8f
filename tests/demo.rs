//! `portico demo` starts its example services and the gateway, and answers the commands it
//! prints.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_starts_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let mut child = Command::new(portico_bin())
        .args(["demo", "--free-ports"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo_pid = child.id();
    let _guard = Killed(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_string();
    let mut printed = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.starts_with("Press") {
            break;
        }
        printed.push(line);
    }
    assert!(printed.iter().any(|l| l.contains("curl")), "{printed:?}");
    // Keep reading so the demo never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));

    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(url.trim_start_matches("http://")).is_ok()
        }),
        "the demo gateway never listened; its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The printed tokens: the first with users:read, the second without.
    let tokens: Vec<String> = printed
        .iter()
        .filter(|l| l.contains("/api/users"))
        .filter_map(|l| l.split("Bearer ").nth(1))
        .map(|rest| rest.split('\'').next().unwrap_or_default().to_string())
        .collect();
    assert!(tokens.len() >= 2, "{printed:?}");
    let (reader, no_scope) = (
        format!("Bearer {}", tokens[0]),
        format!("Bearer {}", tokens[1]),
    );

    let key = [("x-api-key", "demo-key-123")];
    let mut instances = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = send("GET", &format!("{url}/api/orders"), &key);
        assert_eq!(r.status, 200, "{r:?}");
        let j = r.json();
        assert_eq!(j["served_by"]["service"], "orders");
        instances.insert(j["served_by"]["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(instances.len(), 2, "round robin over both orders instances");
    assert_eq!(get(&format!("{url}/api/orders")).status, 401);
    let users = format!("{url}/api/users/2");
    let r = send("GET", &users, &[("authorization", &reader)]);
    assert_eq!(
        r.json()["item"]["name"],
        "Linus",
        "{r:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(get(&users).status, 401);
    assert_eq!(
        send("GET", &users, &[("authorization", &no_scope)]).status,
        403
    );
    let products = format!("{url}/api/products");
    let a = send("GET", &products, &[("x-user", "ada")]).json();
    let b = send("GET", &products, &[("x-user", "ada")]);
    assert_eq!(a["served_by"], b.json()["served_by"]);
    assert_eq!(
        b.header("ratelimit-policy"),
        Some("\"per-client\";q=5;w=10")
    );
    let codes: Vec<u16> = (0..4).map(|_| get(&products).status).collect();
    assert_eq!(
        codes,
        [200, 200, 200, 429],
        "the demo's limit of 5 per 10 s"
    );
    assert_eq!(
        send("DELETE", &format!("{url}/api/users/1"), &[]).status,
        405
    );
    assert_eq!(get(&format!("{url}/nowhere")).status, 404);
    let reports = get(&format!("{url}/api/reports"));
    assert_eq!(reports.status, 503, "{reports:?}");
    assert_eq!(reports.header("retry-after"), Some("3600"));
    assert!(
        printed.iter().any(|l| l.contains("/api/reports")),
        "{printed:?}"
    );
    // Forward auth: the demo's staff authorization service decides; its refusal is
    // passed on as it gave it, and its admission reaches the users service as identity.
    let refused = get(&format!("{url}/api/staff"));
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.json()["error"], "staff only");
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"demo staff sso\"")
    );
    let staff = send(
        "GET",
        &format!("{url}/api/staff"),
        &[("authorization", "Bearer staff-token"), ("x-user-id", "1")],
    );
    assert_eq!(staff.status, 200, "{staff:?}");
    let by = &staff.json()["served_by"];
    assert_eq!(by["service"], "users");
    assert_eq!(by["x-consumer"], "grace");
    assert_eq!(
        by["x-user-id"], "7",
        "the service's header, never the client's"
    );
    assert!(
        printed.iter().any(|l| l.contains("Bearer staff-token")),
        "{printed:?}"
    );
    // The printed debug-header example: the request explained in a response header.
    let token = "demo-admin-token-change-me";
    let explained = send(
        "GET",
        &format!("{url}/api/orders"),
        &[("portico-debug", token), ("x-api-key", "demo-key-123")],
    );
    let line = explained.header("portico-explain").unwrap_or_default();
    assert!(
        line.starts_with("route=orders; policies=access:continue:"),
        "{explained:?}"
    );
    assert!(
        printed.iter().any(|l| l.contains("portico-debug")),
        "{printed:?}"
    );
    // The printed --path-as-is examples: decided on the canonical path.
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let dotted = raw(
        addr,
        "GET /api/products/../orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(dotted.starts_with("HTTP/1.1 401"), "{dotted}");
    let encoded = raw(
        addr,
        "GET /api/products/..%2Forders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(encoded.starts_with("HTTP/1.1 400"), "{encoded}");

    // One call aggregating the three services.
    let overview = send("GET", &format!("{url}/api/overview"), &key);
    assert_eq!(overview.status, 200, "{overview:?}");
    let o = overview.json();
    assert_eq!(o["orders"]["served_by"]["service"], "orders");
    assert_eq!(o["users"]["served_by"]["service"], "users");
    assert_eq!(o["products"]["served_by"]["service"], "products");
    assert_eq!(overview.header("x-composed-for"), Some("mobile-app"));

    // Routes made from the products team's OpenAPI document.
    assert!(
        printed.iter().any(|l| l.contains("/products/2")),
        "{printed:?}"
    );
    let product = get(&format!("{url}/products/2"));
    assert_eq!(product.json()["item"]["name"], "Monitor", "{product:?}");
    let new = r#"{"name":"Mouse","price_cents":1900}"#;
    assert_eq!(
        send_body("POST", &format!("{url}/products"), &[], new).status,
        401
    );
    let created = send_body("POST", &format!("{url}/products"), &key, new);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["created"]["name"], "Mouse");
    assert_eq!(get(&format!("{url}/products/2/extra")).status, 404);

    // The cached catalogue: a miss, then hits; the printed admin commands work.
    let catalog = format!("{url}/api/catalog?b=2&a=1");
    let miss = get(&catalog);
    assert_eq!(miss.json()["served_by"]["service"], "products");
    assert!(
        miss.header("cache-status").unwrap().contains("stored"),
        "{miss:?}"
    );
    let hit = get(&format!("{url}/api/catalog?a=1&b=2&utm_source=x"));
    assert!(
        hit.header("cache-status").unwrap().contains("hit"),
        "{hit:?}"
    );
    let admin_line = printed
        .iter()
        .find(|l| l.contains("/cache/purge"))
        .expect("the demo prints a purge command");
    let admin = admin_line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    let token = admin_line
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let stats = get(&format!("http://{admin}/cache")).json();
    assert_eq!(stats["entries"], 1, "{stats}");
    let purged = send_body(
        "POST",
        &format!("http://{admin}/cache/purge"),
        &[("authorization", &format!("Bearer {token}"))],
        &format!("{{\"prefix\": \"{url}/api/catalog\"}}"),
    );
    assert_eq!(purged.json()["purged"], 1, "{purged:?}");

    // HTTPS with HTTP/2 on the printed port, with the certificate the demo made.
    let https_line = printed
        .iter()
        .find(|l| l.contains("https://localhost:"))
        .expect("the demo prints an HTTPS command");
    let port: u16 = https_line
        .split("https://localhost:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let cert = std::env::temp_dir()
        .join(format!("portico-demo-{demo_pid}"))
        .join("localhost.pem");
    let mut h2 = common::tls::H2::tls(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        "localhost",
        cert.to_str().unwrap(),
    )
    .unwrap();
    let r = h2
        .request("GET", "localhost", "/api/catalog", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=300"));

    // inventory-2 fails: every read still succeeds, and it is ejected after 3 failures.
    for _ in 0..8 {
        let r = get(&format!("{url}/api/inventory"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["served_by"]["instance"], "inventory-1");
    }
    let status = get(&format!("http://{admin}/status")).json();
    let inventory = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "inventory")
        .unwrap()
        .clone();
    let ejections: u64 = inventory["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ejections"].as_u64().unwrap())
        .sum();
    assert_eq!(ejections, 1, "{inventory}");
    // recommendations is down: 503s until the breaker opens, then the fallback.
    let answers: Vec<(u16, serde_json::Value)> = (0..7)
        .map(|_| {
            let r = get(&format!("{url}/api/recommendations"));
            (r.status, r.json())
        })
        .collect();
    assert!(answers[..5].iter().all(|a| a.0 == 503), "{answers:?}");
    assert_eq!(
        answers[6],
        (200, serde_json::json!({"items": [], "degraded": true}))
    );
}
