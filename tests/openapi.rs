//! Routes from an OpenAPI document (`apis[]`): one per operation, matched by method and
//! path template, with the API's policies and per-operation overrides; faults that name the
//! document and the JSON pointer; `portico routes`; a reload that picks up a changed document.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const KEY: &str = "openapi-test-key";

fn fixture() -> String {
    format!(
        "{}/tests/fixtures/bookshop.openapi.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn config(up: &Upstream, spec: &str) -> String {
    let digest = portico::policy::auth::api_key::hash_key(KEY);
    format!(
        r#"
auth:
  api_keys: {{header: x-api-key}}
consumers:
  - {{name: ops, api_keys: ["{digest}"]}}
upstreams:
  - name: up
    targets: [{{address: "{addr}"}}]
routes:
  - name: health
    match: {{path_exact: /healthz}}
    upstream: up
apis:
  - name: shop
    spec: {spec}
    base_path: /v1
    upstream: up
    operations:
      deleteBook: {{access: {{providers: [api_key]}}}}
"#,
        addr = up.addr
    )
}

/// A config for `check` and `routes`, which need a listener (`Gateway` adds its own).
fn listening(config: &str) -> String {
    format!(
        "listeners: [{{address: 127.0.0.1:{}}}]\n{config}",
        free_port()
    )
}

#[test]
fn every_operation_is_a_route_matched_by_method_and_template() {
    let up = Upstream::start("books");
    let gw = Gateway::start(&config(&up, &fixture()));
    let status = |method: &str, path: &str, headers: &[(&str, &str)]| {
        send(method, &gw.url(path), headers).status
    };
    assert_eq!(status("GET", "/v1/books", &[]), 200);
    assert_eq!(status("POST", "/v1/books", &[]), 200);
    assert_eq!(status("GET", "/v1/books/42", &[]), 200);
    // An operation without an operationId is a route all the same.
    assert_eq!(status("GET", "/v1/books/42/reviews", &[]), 200);
    // A parameter that is part of a segment.
    assert_eq!(status("GET", "/v1/covers/42.jpg", &[]), 200);
    // The path is known, the method is not: 405, not 404.
    assert_eq!(status("PUT", "/v1/books", &[]), 405);
    // A parameter is one segment, never more; paths are under the base path only.
    assert_eq!(status("GET", "/v1/books/42/x/reviews", &[]), 404);
    assert_eq!(status("GET", "/v1/covers/a/b.jpg", &[]), 404);
    assert_eq!(status("GET", "/books", &[]), 404);
    // The config's per-operation override: deleting needs an API key.
    assert_eq!(status("DELETE", "/v1/books/42", &[]), 401);
    assert_eq!(status("DELETE", "/v1/books/42", &[("x-api-key", KEY)]), 200);
    // The operation's own x-portico extension: ordering is under maintenance.
    let r = send("POST", &gw.url("/v1/orders"), &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("120"));
    let seen: Vec<(String, String)> = up
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.target.clone()))
        .collect();
    let expected = [
        ("GET", "/v1/books"),
        ("POST", "/v1/books"),
        ("GET", "/v1/books/42"),
        ("GET", "/v1/books/42/reviews"),
        ("GET", "/v1/covers/42.jpg"),
        ("DELETE", "/v1/books/42"),
    ];
    assert_eq!(
        seen,
        expected
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn faults_name_the_document_and_the_json_pointer() {
    let up = Upstream::start("books");
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(fixture())
        .unwrap()
        .replace("  /orders:\n", "  orders:\n")
        .replace("operationId: getCover", "operationId: getBook");
    std::fs::write(&spec, text).unwrap();
    let (ok, out) = check_config(&listening(&config(&up, &spec.display().to_string())));
    assert!(!ok, "{out}");
    let spec = spec.display().to_string();
    for expected in [
        format!("{spec}#/paths/orders: a path must start with /"),
        format!("{spec}#/paths/~1covers~1{{bookId}}.jpg/get/operationId: operationId \"getBook\" is used twice"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }

    // An operation override for an operation the document does not have, a route field
    // that does not exist, and a hand-written route on an operation's path: each refused.
    let cases = [
        (
            config(&up, &fixture()).replace("deleteBook: {", "removeBook: {"),
            "apis[0].operations.removeBook: ",
        ),
        (
            config(&up, &fixture()).replace(
                "    upstream: up\n    operations",
                "    upstream: up\n    retries: 3\n    operations",
            ),
            "apis[0].retries: unknown field `retries`",
        ),
        (
            config(&up, &fixture()).replace("path_exact: /healthz", "path_exact: /v1/books"),
            "apis[0].operations.listBooks: answers the same method and path as route \"health\"",
        ),
    ];
    for (text, expected) in cases {
        let (ok, out) = check_config(&listening(&text));
        assert!(!ok, "{out}");
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let (ok, out) = check_config(&listening(&config(&up, &fixture())));
    assert!(ok, "{out}");
}

#[test]
fn portico_routes_lists_the_generated_table() {
    let up = Upstream::start("books");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("portico.yaml");
    std::fs::write(&conf, listening(&config(&up, &fixture()))).unwrap();
    let out = Command::new(portico_bin())
        .args(["routes", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "METHODS", "HOSTS", "PATH", "UPSTREAM", "POLICIES"]
    );
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .clone()
    };
    assert_eq!(
        row("health"),
        ["health", "*", "*", "=", "/healthz", "up", "-"]
    );
    assert_eq!(
        row("shop.getBook"),
        ["shop.getBook", "GET", "*", "/v1/books/{bookId}", "up", "-"]
    );
    assert_eq!(row("shop.deleteBook")[5], "access");
    assert_eq!(row("shop.placeOrder")[5], "maintenance");
    assert_eq!(
        row("shop.get_books_bookId_reviews")[3],
        "/v1/books/{bookId}/reviews"
    );
    // The header, one hand-written route and seven operations.
    assert_eq!(rows.len(), 1 + 1 + 7, "{text}");
}

#[test]
fn a_reload_picks_up_a_changed_document() {
    let up = Upstream::start("books");
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("shop.yaml");
    std::fs::copy(fixture(), &spec).unwrap();
    let gw = Gateway::start(&config(&up, &spec.display().to_string()));
    assert_eq!(get(&gw.url("/v1/authors")).status, 404);
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "  /orders:\n",
        "  /authors:\n    get:\n      operationId: listAuthors\n      responses:\n        \"200\": {description: Authors.}\n  /orders:\n",
    );
    std::fs::write(&spec, text).unwrap();
    signal(gw.pid(), "HUP");
    assert!(
        eventually(Duration::from_secs(10), || get(&gw.url("/v1/authors"))
            .status
            == 200),
        "{}",
        gw.log_text()
    );
    assert_eq!(up.count_path("/v1/authors"), up.count());
}

#[test]
fn requests_are_checked_against_the_document_and_bad_ones_never_reach_the_upstream() {
    let up = Upstream::start("books");
    let cfg = config(&up, &fixture()).replace(
        "    base_path: /v1\n",
        "    base_path: /v1\n    validate: {request: true}\n",
    );
    let gw = Gateway::start(&cfg);
    let json = [("content-type", "application/json")];
    let problem = |r: &Resp| {
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let p = r.json();
        assert_eq!(p["status"], 400);
        assert!(p["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        let listed: Vec<(String, String, String)> = p["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                (s("in"), s("name"), s("pointer"))
            })
            .collect();
        assert_eq!(p["violation_count"], listed.len());
        listed
    };
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());

    // Query parameters: type and range.
    let r = get(&gw.url("/v1/books?limit=abc"));
    assert_eq!(problem(&r), [t("query", "limit", "")]);
    let r = get(&gw.url("/v1/books?limit=500"));
    assert_eq!(problem(&r), [t("query", "limit", "")]);
    assert_eq!(get(&gw.url("/v1/books?limit=5")).status, 200);

    // A JSON body: every violation, each with its pointer.
    let r = send_body(
        "POST",
        &gw.url("/v1/books"),
        &json,
        r#"{"title": "", "isbn": "not-an-isbn"}"#,
    );
    let mut found = problem(&r);
    found.sort();
    assert_eq!(
        found,
        [
            t("body", "", ""),
            t("body", "", "/isbn"),
            t("body", "", "/title")
        ]
    );
    let r = send_body("POST", &gw.url("/v1/books"), &json, "{not json");
    assert_eq!(problem(&r), [t("body", "", "")]);
    // A required body that is missing; a media type the operation does not take.
    let r = send_body("POST", &gw.url("/v1/books"), &json, "");
    assert_eq!(problem(&r), [t("body", "", "")]);
    let r = send_body(
        "POST",
        &gw.url("/v1/books"),
        &[("content-type", "text/plain")],
        "a book",
    );
    assert_eq!(r.status, 415, "{r:?}");

    // A body larger than can be validated: refused, unread.
    let huge = format!(r#"{{"title": "{}", "author": "A"}}"#, "t".repeat(70 * 1024));
    assert_eq!(
        send_body("POST", &gw.url("/v1/books"), &json, &huge).status,
        413
    );

    // A conforming body goes through unchanged.
    let good = r#"{"title": "Dune", "author": "Frank Herbert", "isbn": "978-0441013593"}"#;
    assert_eq!(
        send_body("POST", &gw.url("/v1/books"), &json, good).status,
        200
    );
    let requests = up.requests();
    assert_eq!(
        requests.len(),
        2,
        "only the conforming requests reached the upstream"
    );
    assert_eq!(requests[0].target, "/v1/books?limit=5");
    assert_eq!(requests[1].body, good);
}

/// `validate` per operation: here only creating a book is checked.
#[test]
fn one_operation_can_validate_on_its_own() {
    let up = Upstream::start("books");
    let cfg = config(&up, &fixture()).replace(
        "    operations:\n",
        "    operations:\n      createBook: {validate: {request: true}}\n",
    );
    let gw = Gateway::start(&cfg);
    let json = [("content-type", "application/json")];
    let r = send_body("POST", &gw.url("/v1/books"), &json, r#"{"title": "Dune"}"#);
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(get(&gw.url("/v1/books?limit=abc")).status, 200);
    assert_eq!(up.count(), 1);
    // An operation's `validate` is checked like the API's.
    let bad = cfg.replace(
        "{validate: {request: true}}",
        "{validate: {requests: true}}",
    );
    let (ok, out) = check_config(&listening(&bad));
    assert!(
        !ok && out.contains("apis[0].operations.createBook.validate"),
        "{out}"
    );
}

/// `validate.response: report`: responses pass unchanged; what does not match the document
/// is counted by kind (and logged).
#[test]
fn responses_that_do_not_match_are_reported_not_blocked() {
    let up = Upstream::start("books");
    let admin = free_port();
    let cfg = config(&up, &fixture()).replace(
        "    base_path: /v1\n",
        "    base_path: /v1\n    validate: {response: report}\n",
    );
    let gw = Gateway::start(&format!(
        "admin:\n  address: 127.0.0.1:{admin}\n  token: openapi-admin-token-0123\n{cfg}"
    ));
    let json = [("content-type", "application/json")];
    let book = r#"{"id": "1", "title": "Dune", "author": "Frank Herbert"}"#;
    up.script("/v1/books/1", 200, &json, book);
    up.script("/v1/books/2", 200, &json, r#"{"id": 2}"#);
    up.script("/v1/books/3", 500, &json, r#"{"error": "boom"}"#);
    up.script(
        "/v1/books/4",
        200,
        &[("content-type", "text/html")],
        "<p>Dune</p>",
    );
    up.script("/v1/books/5", 404, &[], "");
    let r = get(&gw.url("/v1/books/1"));
    assert_eq!((r.status, r.body.as_str()), (200, book));
    let r = get(&gw.url("/v1/books/2"));
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"id": 2}"#));
    assert_eq!(get(&gw.url("/v1/books/3")).status, 500);
    assert_eq!(get(&gw.url("/v1/books/4")).status, 200);
    assert_eq!(get(&gw.url("/v1/books/5")).status, 404);
    // Requests are not checked with `response: report` alone.
    assert_eq!(get(&gw.url("/v1/books?limit=abc")).status, 200);
    let metrics = admin_get(admin, "/metrics").body;
    let count = |kind: &str| -> u64 {
        let series = format!(
            "portico_contract_response_mismatches_total{{kind=\"{kind}\",route=\"shop.getBook\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        (count("body"), count("status"), count("media_type")),
        (1, 1, 1),
        "{metrics}"
    );
    assert!(gw
        .log_text()
        .contains("does not match the API's contract (body)"));
}

/// A document of real size (36 operations, shared parameters and schemas by `$ref`, `allOf`,
/// `oneOf`): for each kind of rule a request that keeps it and one that breaks it. Only the
/// first kind reaches the upstream.
#[test]
fn a_real_size_document_checks_every_kind_of_rule() {
    let up = Upstream::start("store");
    let spec = format!(
        "{}/tests/fixtures/storefront.openapi.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let gw = Gateway::start(&format!(
        "upstreams:\n  - name: up\n    targets: [{{address: \"{}\"}}]\n\
         apis:\n  - name: store\n    spec: {spec}\n    base_path: /v2\n    upstream: up\n    validate: {{request: true}}\n",
        up.addr
    ));
    let key = ("idempotency-key", "0123456789abcdef0123");
    let json = ("content-type", "application/json");
    let product = r#"{"name": "Lamp", "price": {"amount": 1999, "currency": "EUR"}}"#;
    let payment = |method: &str| {
        format!(r#"{{"amount": {{"amount": 1999, "currency": "EUR"}}, "method": {method}}}"#)
    };
    let order = |shipping: &str| {
        format!(r#"{{"cart_id": "0f8b7a9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "shipping": {shipping}}}"#)
    };
    // (method, path, headers, body, expected status, expected violation as in/name/pointer)
    type Case<'a> = (
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        String,
        u16,
        Option<(&'a str, &'a str, &'a str)>,
    );
    let s = |v: &str| v.to_string();
    let cases: Vec<Case> = vec![
        // Path parameters: type, minimum, pattern.
        ("GET", s("/v2/products/7"), vec![], s(""), 200, None),
        (
            "GET",
            s("/v2/products/abc"),
            vec![],
            s(""),
            400,
            Some(("path", "productId", "")),
        ),
        (
            "GET",
            s("/v2/products/0"),
            vec![],
            s(""),
            400,
            Some(("path", "productId", "")),
        ),
        ("GET", s("/v2/coupons/SPRING24"), vec![], s(""), 200, None),
        (
            "GET",
            s("/v2/coupons/spring"),
            vec![],
            s(""),
            400,
            Some(("path", "code", "")),
        ),
        // Query parameters: range, enum, pattern, array items and size, boolean, required.
        (
            "GET",
            s("/v2/products?limit=100&sort=-price&in_stock=true&tags=ab&tags=cd"),
            vec![],
            s(""),
            200,
            None,
        ),
        (
            "GET",
            s("/v2/products?limit=0"),
            vec![],
            s(""),
            400,
            Some(("query", "limit", "")),
        ),
        // A single-valued parameter given twice (the service might read the other one).
        (
            "GET",
            s("/v2/products?limit=5&limit=abc"),
            vec![],
            s(""),
            400,
            Some(("query", "limit", "")),
        ),
        (
            "GET",
            s("/v2/products?sort=cheapest"),
            vec![],
            s(""),
            400,
            Some(("query", "sort", "")),
        ),
        (
            "GET",
            s("/v2/products?category=Bad_Cat"),
            vec![],
            s(""),
            400,
            Some(("query", "category", "")),
        ),
        (
            "GET",
            s("/v2/products?tags=a"),
            vec![],
            s(""),
            400,
            Some(("query", "tags", "/0")),
        ),
        (
            "GET",
            s("/v2/products?tags=aa,bb,cc,dd,ee,ff"),
            vec![],
            s(""),
            400,
            Some(("query", "tags", "")),
        ),
        (
            "GET",
            s("/v2/products?in_stock=yes"),
            vec![],
            s(""),
            400,
            Some(("query", "in_stock", "")),
        ),
        (
            "GET",
            s("/v2/search?q=lamp&price_max=9.5"),
            vec![],
            s(""),
            200,
            None,
        ),
        (
            "GET",
            s("/v2/search"),
            vec![],
            s(""),
            400,
            Some(("query", "q", "")),
        ),
        (
            "GET",
            s("/v2/search?q=lamp&price_max=0"),
            vec![],
            s(""),
            400,
            Some(("query", "price_max", "")),
        ),
        (
            "GET",
            s("/v2/orders?status=lost"),
            vec![],
            s(""),
            400,
            Some(("query", "status", "")),
        ),
        // Header parameters: required, length, enum.
        (
            "POST",
            s("/v2/products"),
            vec![json, key],
            s(product),
            200,
            None,
        ),
        (
            "POST",
            s("/v2/products"),
            vec![json],
            s(product),
            400,
            Some(("header", "idempotency-key", "")),
        ),
        (
            "POST",
            s("/v2/products"),
            vec![json, ("idempotency-key", "short")],
            s(product),
            400,
            Some(("header", "idempotency-key", "")),
        ),
        (
            "POST",
            s("/v2/webhooks"),
            vec![json, ("x-signature-version", "3")],
            s(r#"{"url": "https://h.test/x", "events": ["order.placed"]}"#),
            400,
            Some(("header", "x-signature-version", "")),
        ),
        // Bodies: $ref'd schemas, nested patterns, additionalProperties, oneOf, allOf, uniqueItems.
        (
            "POST",
            s("/v2/products"),
            vec![json, key],
            s(r#"{"name": "Lamp", "price": {"amount": 1, "currency": "eur"}}"#),
            400,
            Some(("body", "", "/price/currency")),
        ),
        (
            "POST",
            s("/v2/products"),
            vec![json, key],
            s(r#"{"name": "Lamp", "price": {"amount": 1, "currency": "EUR"}, "colour": "red"}"#),
            400,
            Some(("body", "", "")),
        ),
        (
            "POST",
            s("/v2/orders/ord_abcdefghij/payments"),
            vec![json, key],
            payment(r#"{"type": "card", "card_token": "tok_1"}"#),
            200,
            None,
        ),
        (
            "POST",
            s("/v2/orders/ord_abcdefghij/payments"),
            vec![json, key],
            payment(r#"{"type": "card", "iban": "DE00123456789012345678"}"#),
            400,
            Some(("body", "", "/method")),
        ),
        (
            "POST",
            s("/v2/orders"),
            vec![json, key],
            order(r#"{"line1": "1 Main St", "city": "Oslo", "country": "NO"}"#),
            200,
            None,
        ),
        (
            "POST",
            s("/v2/orders"),
            vec![json, key],
            order(r#"{"line1": "1 Main St", "country": "NO"}"#),
            400,
            Some(("body", "", "/shipping")),
        ),
        (
            "POST",
            s("/v2/webhooks"),
            vec![json, ("x-signature-version", "2")],
            s(r#"{"url": "https://h.test/x", "events": ["order.placed", "order.placed"]}"#),
            400,
            Some(("body", "", "/events")),
        ),
        // Media types: a +json type, a type not listed, a body that is not JSON.
        (
            "PATCH",
            s("/v2/products/7"),
            vec![("content-type", "application/merge-patch+json")],
            s(r#"{"name": "Desk lamp"}"#),
            200,
            None,
        ),
        (
            "PATCH",
            s("/v2/products/7"),
            vec![("content-type", "application/merge-patch+json")],
            s("{}"),
            400,
            Some(("body", "", "")),
        ),
        (
            "PATCH",
            s("/v2/products/7"),
            vec![json],
            s(r#"{"name": "Desk lamp"}"#),
            415,
            None,
        ),
        (
            "POST",
            s("/v2/products/7/images"),
            vec![("content-type", "image/png")],
            s("\u{89}PNG"),
            200,
            None,
        ),
        (
            "POST",
            s("/v2/products/7/images"),
            vec![("content-type", "text/plain")],
            s("a picture"),
            415,
            None,
        ),
        (
            "PUT",
            s("/v2/inventory/ABC-1234"),
            vec![json],
            s(r#"{"on_hand": -1}"#),
            400,
            Some(("body", "", "/on_hand")),
        ),
    ];
    let mut passed = 0;
    for (method, path, headers, body, status, violation) in &cases {
        let r = send_body(method, &gw.url(path), headers, body);
        assert_eq!(r.status, *status, "{method} {path} {body}: {r:?}");
        if *status == 200 {
            passed += 1;
        }
        if let Some((place, name, pointer)) = violation {
            let found = r.json()["violations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                found.iter().any(|v| v["in"] == *place
                    && v["name"].as_str().unwrap_or("") == *name
                    && v["pointer"] == *pointer),
                "{method} {path} {body}: no {place}/{name}/{pointer:?} in {found:?}"
            );
        }
    }
    assert_eq!(passed, 9);
    assert_eq!(
        up.count(),
        passed,
        "only conforming requests reached the upstream"
    );
}
