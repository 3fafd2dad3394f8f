//! The response cache through the real gateway, against upstreams that count requests:
//! RFC 9111 storage and freshness rules, request directives, validation, Vary,
//! invalidation, coalescing, the memory budget, purges and Cache-Status (RFC 9211).

mod common;
use common::*;
use std::time::Duration;

const TOKEN: &str = "admin-token-0123456789";

/// A gateway whose one route (everything) caches with `policy`; `extra` goes on top.
fn gateway(up: &Upstream, policy: &str, extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"{extra}
upstreams:
  - name: app
    targets: [{{address: "{up}"}}]
routes:
  - name: api
    upstream: app
    cache: {policy}
"#,
        up = up.addr
    ))
}

fn status_of(r: &Resp) -> &str {
    r.header("cache-status").unwrap_or("")
}

fn get_h(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    send("GET", &gw.url(path), headers)
}

#[test]
fn a_fresh_response_is_served_from_the_cache_with_age_and_status() {
    let up = Upstream::start("app");
    up.script("/p", 200, &[("cache-control", "max-age=60")], "body {n}");
    let gw = gateway(&up, "{}", "");
    let first = get(&gw.url("/p"));
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "body 1");
    assert_eq!(
        status_of(&first),
        "portico; fwd=uri-miss; fwd-status=200; stored"
    );
    let second = get(&gw.url("/p"));
    assert_eq!(second.body, "body 1");
    assert!(
        status_of(&second).starts_with("portico; hit; ttl="),
        "{second:?}"
    );
    assert!(second.header("age").is_some(), "a hit carries Age");
    assert_eq!(up.count_path("/p"), 1);
}

#[test]
fn s_maxage_wins_over_max_age_which_wins_over_expires() {
    let up = Upstream::start("app");
    let past = "Thu, 01 Jan 2015 00:00:00 GMT";
    let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    up.script(
        "/s",
        200,
        &[("cache-control", "max-age=1, s-maxage=60")],
        "s",
    );
    up.script(
        "/m",
        200,
        &[("cache-control", "max-age=60"), ("expires", past)],
        "m",
    );
    up.script("/e", 200, &[("expires", &future)], "e");
    up.script("/gone", 200, &[("expires", past)], "g");
    let gw = gateway(&up, "{}", "");
    for p in ["/s", "/m", "/e", "/gone"] {
        get(&gw.url(p));
    }
    std::thread::sleep(Duration::from_millis(2100));
    for p in ["/s", "/m", "/e", "/gone"] {
        get(&gw.url(p));
    }
    assert_eq!(up.count_path("/s"), 1, "s-maxage=60 outlives max-age=1");
    assert_eq!(up.count_path("/m"), 1, "max-age=60 beats a past Expires");
    assert_eq!(up.count_path("/e"), 1, "Expires alone gives freshness");
    assert_eq!(
        up.count_path("/gone"),
        2,
        "an Expires in the past is stale on arrival"
    );
}

#[test]
fn private_and_no_store_responses_are_not_stored() {
    let up = Upstream::start("app");
    up.script(
        "/private",
        200,
        &[("cache-control", "private, max-age=60")],
        "x",
    );
    up.script(
        "/nostore",
        200,
        &[("cache-control", "no-store, max-age=60")],
        "x",
    );
    up.script(
        "/named",
        200,
        &[
            ("cache-control", "private=\"x-user\", max-age=60"),
            ("x-user", "ada"),
        ],
        "x",
    );
    let gw = gateway(&up, "{}", "");
    let r = get(&gw.url("/private"));
    assert!(status_of(&r).ends_with("detail=private"), "{r:?}");
    get(&gw.url("/private"));
    let r = get(&gw.url("/nostore"));
    assert!(status_of(&r).ends_with("detail=no-store"), "{r:?}");
    get(&gw.url("/nostore"));
    assert_eq!(up.count_path("/private"), 2);
    assert_eq!(up.count_path("/nostore"), 2);
    // private with field names: stored without those fields.
    let first = get(&gw.url("/named"));
    assert_eq!(first.header("x-user"), Some("ada"));
    let hit = get(&gw.url("/named"));
    assert!(status_of(&hit).contains("hit"), "{hit:?}");
    assert_eq!(
        hit.header("x-user"),
        None,
        "a private field is never shared"
    );
}

#[test]
fn no_cache_responses_are_stored_but_revalidated_every_time() {
    let up = Upstream::start("app");
    up.script(
        "/nc",
        200,
        &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    assert_eq!(get(&gw.url("/nc")).body, "body 1");
    let second = get(&gw.url("/nc"));
    assert_eq!(second.status, 200);
    assert_eq!(second.body, "body 1", "the stored body, confirmed by a 304");
    assert!(status_of(&second).contains("fwd-status=304"), "{second:?}");
    assert_eq!(up.count_path("/nc"), 2);
    let revalidation = up.last("/nc").unwrap();
    assert_eq!(revalidation.header("if-none-match"), Some("\"v1\""));
}

#[test]
fn must_revalidate_and_proxy_revalidate_forbid_serving_stale() {
    let up = Upstream::start("app");
    let sie = "max-age=1, stale-if-error=60";
    up.script("/free", 200, &[("cache-control", sie)], "old");
    up.script(
        "/must",
        200,
        &[("cache-control", &format!("{sie}, must-revalidate"))],
        "old",
    );
    up.script(
        "/proxy",
        200,
        &[("cache-control", &format!("{sie}, proxy-revalidate"))],
        "old",
    );
    let gw = gateway(&up, "{}", "");
    for p in ["/free", "/must", "/proxy"] {
        assert_eq!(get(&gw.url(p)).body, "old");
    }
    std::thread::sleep(Duration::from_millis(2100));
    for p in ["/free", "/must", "/proxy"] {
        up.script(p, 503, &[], "down");
    }
    let free = get(&gw.url("/free"));
    assert_eq!(
        (free.status, free.body.as_str()),
        (200, "old"),
        "stale-if-error serves the old body"
    );
    assert!(status_of(&free).contains("stale-if-error"), "{free:?}");
    for p in ["/must", "/proxy"] {
        let r = get(&gw.url(p));
        assert_eq!(r.status, 503, "{p} must not be served stale: {r:?}");
    }
}

#[test]
fn request_no_cache_and_max_age_force_revalidation() {
    let up = Upstream::start("app");
    up.script(
        "/r",
        200,
        &[("cache-control", "max-age=60"), ("etag", "\"a\"")],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    get(&gw.url("/r"));
    let forced = get_h(&gw, "/r", &[("cache-control", "no-cache")]);
    assert!(status_of(&forced).contains("fwd=request"), "{forced:?}");
    assert_eq!(up.count_path("/r"), 2);
    let pragma = get_h(&gw, "/r", &[("pragma", "no-cache")]);
    assert!(status_of(&pragma).contains("fwd=request"), "{pragma:?}");
    std::thread::sleep(Duration::from_millis(1100));
    let young = get_h(&gw, "/r", &[("cache-control", "max-age=30")]);
    assert!(status_of(&young).contains("hit"), "{young:?}");
    let old = get_h(&gw, "/r", &[("cache-control", "max-age=0")]);
    assert!(status_of(&old).contains("fwd=request"), "{old:?}");
    assert_eq!(up.count_path("/r"), 4);
}

#[test]
fn request_no_store_keeps_the_response_out() {
    let up = Upstream::start("app");
    up.script("/ns", 200, &[("cache-control", "max-age=60")], "body {n}");
    let gw = gateway(&up, "{}", "");
    let r = get_h(&gw, "/ns", &[("cache-control", "no-store")]);
    assert!(status_of(&r).contains("detail=request-no-store"), "{r:?}");
    assert_eq!(get(&gw.url("/ns")).body, "body 2", "nothing was stored");
    assert_eq!(get(&gw.url("/ns")).body, "body 2");
}

#[test]
fn max_stale_and_min_fresh_adjust_what_is_acceptable() {
    let up = Upstream::start("app");
    up.script("/short", 200, &[("cache-control", "max-age=1")], "body {n}");
    up.script("/long", 200, &[("cache-control", "max-age=30")], "body {n}");
    up.script(
        "/strict",
        200,
        &[("cache-control", "max-age=1, must-revalidate")],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    for p in ["/short", "/long", "/strict"] {
        get(&gw.url(p));
    }
    std::thread::sleep(Duration::from_millis(2100));
    let stale_ok = get_h(&gw, "/short", &[("cache-control", "max-stale=60")]);
    assert_eq!(stale_ok.body, "body 1", "{stale_ok:?}");
    assert!(status_of(&stale_ok).contains("ttl=-"), "{stale_ok:?}");
    let too_stale = get_h(&gw, "/short", &[("cache-control", "max-stale=0")]);
    assert_eq!(too_stale.body, "body 2");
    let strict = get_h(&gw, "/strict", &[("cache-control", "max-stale")]);
    assert_eq!(strict.body, "body 2", "must-revalidate overrides max-stale");
    let enough = get_h(&gw, "/long", &[("cache-control", "min-fresh=5")]);
    assert_eq!(enough.body, "body 1");
    let not_enough = get_h(&gw, "/long", &[("cache-control", "min-fresh=60")]);
    assert_eq!(not_enough.body, "body 2");
}

#[test]
fn only_if_cached_answers_504_on_a_miss() {
    let up = Upstream::start("app");
    up.script("/o", 200, &[("cache-control", "max-age=60")], "body");
    let gw = gateway(&up, "{}", "");
    let miss = get_h(&gw, "/o", &[("cache-control", "only-if-cached")]);
    assert_eq!(miss.status, 504, "{miss:?}");
    assert_eq!(miss.json()["status"], 504);
    assert_eq!(up.count_path("/o"), 0);
    get(&gw.url("/o"));
    let hit = get_h(&gw, "/o", &[("cache-control", "only-if-cached")]);
    assert_eq!((hit.status, hit.body.as_str()), (200, "body"));
}

#[test]
fn age_from_upstream_counts_towards_freshness() {
    let up = Upstream::start("app");
    up.script(
        "/aged",
        200,
        &[("cache-control", "max-age=100"), ("age", "30")],
        "x",
    );
    up.script(
        "/nearly",
        200,
        &[("cache-control", "max-age=3"), ("age", "2")],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    get(&gw.url("/aged"));
    let hit = get(&gw.url("/aged"));
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!(
        (30..=32).contains(&age),
        "Age {age} continues the upstream's 30"
    );
    let ttl = status_of(&hit);
    assert!(
        ttl.contains("ttl=70") || ttl.contains("ttl=69") || ttl.contains("ttl=68"),
        "{ttl}"
    );
    get(&gw.url("/nearly"));
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        get(&gw.url("/nearly")).body,
        "body 2",
        "only 1 s of freshness was left"
    );
}

#[test]
fn vary_stores_variants_separately_and_vary_star_not_at_all() {
    let up = Upstream::start("app");
    up.script(
        "/v",
        200,
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        "body {n}",
    );
    up.script(
        "/star",
        200,
        &[("cache-control", "max-age=60"), ("vary", "*")],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    let en = |gw: &Gateway| get_h(gw, "/v", &[("accept-language", "en")]).body;
    let de = |gw: &Gateway| get_h(gw, "/v", &[("accept-language", "de")]).body;
    assert_eq!(en(&gw), "body 1");
    assert_eq!(de(&gw), "body 2");
    assert_eq!(en(&gw), "body 1");
    assert_eq!(de(&gw), "body 2");
    let none = get(&gw.url("/v"));
    assert_eq!(none.body, "body 3", "no header is a variant of its own");
    assert!(status_of(&none).contains("fwd=vary-miss"), "{none:?}");
    assert_eq!(up.count_path("/v"), 3);
    get(&gw.url("/star"));
    let r = get(&gw.url("/star"));
    assert!(status_of(&r).contains("detail=vary-star"), "{r:?}");
    assert_eq!(up.count_path("/star"), 2);
}

#[test]
fn validation_with_etag_and_last_modified_updates_stored_headers() {
    let up = Upstream::start("app");
    let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
    up.script(
        "/etag",
        200,
        &[
            ("cache-control", "max-age=1"),
            ("etag", "\"e1\""),
            ("x-version", "1"),
        ],
        "body {n}",
    );
    up.script(
        "/lm",
        200,
        &[
            ("cache-control", "max-age=1"),
            ("last-modified", lm),
            ("x-version", "1"),
        ],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    get(&gw.url("/etag"));
    get(&gw.url("/lm"));
    // A client's own conditional request is answered from the cache.
    let cond = get_h(&gw, "/etag", &[("if-none-match", "\"e1\"")]);
    assert_eq!(cond.status, 304, "{cond:?}");
    assert_eq!(up.count_path("/etag"), 1);
    std::thread::sleep(Duration::from_millis(2100));
    up.script(
        "/etag",
        200,
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"e1\""),
            ("x-version", "2"),
        ],
        "new body",
    );
    up.script(
        "/lm",
        200,
        &[
            ("cache-control", "max-age=60"),
            ("last-modified", lm),
            ("x-version", "2"),
        ],
        "new body",
    );
    for p in ["/etag", "/lm"] {
        let r = get(&gw.url(p));
        assert_eq!(
            r.body, "body 1",
            "{p}: the upstream said 304, the stored body stays"
        );
        assert_eq!(
            r.header("x-version"),
            Some("2"),
            "{p}: headers from the 304 replace stored ones"
        );
        assert!(status_of(&r).contains("fwd=stale; fwd-status=304"), "{r:?}");
        let hit = get(&gw.url(p));
        assert!(
            status_of(&hit).contains("hit"),
            "{p}: fresh again for 60 s: {hit:?}"
        );
        assert_eq!(hit.header("x-version"), Some("2"));
        assert_eq!(up.count_path(p), 2);
    }
    assert_eq!(
        up.last("/etag").unwrap().header("if-none-match"),
        Some("\"e1\"")
    );
    assert_eq!(
        up.last("/lm").unwrap().header("if-modified-since"),
        Some(lm)
    );
}

#[test]
fn authorization_requests_are_stored_only_when_the_response_allows() {
    let up = Upstream::start("app");
    up.script(
        "/private-ish",
        200,
        &[("cache-control", "max-age=60")],
        "body {n}",
    );
    up.script(
        "/public",
        200,
        &[("cache-control", "public, max-age=60")],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    let auth = [("authorization", "Bearer abc")];
    let r = get_h(&gw, "/private-ish", &auth);
    assert!(status_of(&r).contains("detail=authorization"), "{r:?}");
    assert_eq!(get(&gw.url("/private-ish")).body, "body 2");
    get_h(&gw, "/public", &auth);
    assert_eq!(
        get(&gw.url("/public")).body,
        "body 1",
        "public allows sharing"
    );
}

#[test]
fn status_codes_need_explicit_freshness_unless_cacheable_by_default() {
    let up = Upstream::start("app");
    up.script("/missing", 404, &[], "no {n}");
    up.script("/moved", 302, &[("location", "/elsewhere")], "moved {n}");
    up.script(
        "/moved-fresh",
        302,
        &[("location", "/elsewhere"), ("cache-control", "max-age=60")],
        "moved {n}",
    );
    up.script("/error", 500, &[], "err {n}");
    up.script(
        "/partial",
        206,
        &[
            ("cache-control", "max-age=60"),
            ("content-range", "bytes 0-3/10"),
        ],
        "part",
    );
    let gw = gateway(&up, "{default_ttl: 30s}", "");
    for p in ["/missing", "/moved", "/moved-fresh", "/error", "/partial"] {
        get(&gw.url(p));
        get(&gw.url(p));
    }
    assert_eq!(up.count_path("/missing"), 1, "404 is cacheable by default");
    assert_eq!(up.count_path("/moved"), 2, "302 needs explicit freshness");
    assert_eq!(up.count_path("/moved-fresh"), 1);
    assert_eq!(up.count_path("/error"), 2);
    assert_eq!(
        up.count_path("/partial"),
        2,
        "a 206 is never stored (only whole representations are)"
    );
}

#[test]
fn unsafe_methods_invalidate_the_target_and_location() {
    let up = Upstream::start("app");
    up.script(
        "/items/1",
        200,
        &[("cache-control", "max-age=60")],
        "item {n}",
    );
    up.script(
        "/items/2",
        200,
        &[("cache-control", "max-age=60")],
        "item {n}",
    );
    up.script(
        "/items",
        201,
        &[("location", "/items/2"), ("content-location", "/items/1")],
        "made",
    );
    up.script(
        "/items/3",
        200,
        &[("cache-control", "max-age=60")],
        "item {n}",
    );
    let gw = gateway(&up, "{}", "");
    for p in ["/items/1", "/items/2", "/items/3"] {
        get(&gw.url(p));
    }
    // A failed unsafe request changes nothing.
    up.script("/items/3", 500, &[], "fail");
    assert_eq!(send("DELETE", &gw.url("/items/3"), &[]).status, 500);
    up.script(
        "/items/3",
        200,
        &[("cache-control", "max-age=60")],
        "item {n}",
    );
    assert_eq!(get(&gw.url("/items/3")).body, "item 1");
    assert_eq!(send_body("POST", &gw.url("/items"), &[], "{}").status, 201);
    assert_eq!(
        get(&gw.url("/items/1")).body,
        "item 2",
        "Content-Location invalidated"
    );
    assert_eq!(
        get(&gw.url("/items/2")).body,
        "item 2",
        "Location invalidated"
    );
    assert_eq!(send("PUT", &gw.url("/items/3"), &[]).status, 200);
    assert_eq!(
        get(&gw.url("/items/3")).body,
        "item 4",
        "target URI invalidated"
    );
}

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let up = Upstream::start("app");
    up.script(
        "/swr",
        200,
        &[("cache-control", "max-age=1, stale-while-revalidate=30")],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    get(&gw.url("/swr"));
    std::thread::sleep(Duration::from_millis(2100));
    let stale = get(&gw.url("/swr"));
    assert_eq!(stale.body, "body 1");
    assert!(
        status_of(&stale).contains("stale-while-revalidate"),
        "{stale:?}"
    );
    assert!(eventually(Duration::from_secs(3), || up.count_path("/swr") == 2));
    assert!(eventually(Duration::from_secs(3), || get(&gw.url("/swr"))
        .body
        == "body 2"));
}

#[test]
fn head_is_served_from_a_cached_get() {
    let up = Upstream::start("app");
    up.script(
        "/h",
        200,
        &[("cache-control", "max-age=60")],
        "twelve bytes",
    );
    let gw = gateway(&up, "{}", "");
    get(&gw.url("/h"));
    let head = send("HEAD", &gw.url("/h"), &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(head.header("content-length"), Some("12"));
    assert!(status_of(&head).contains("hit"), "{head:?}");
    assert_eq!(up.count_path("/h"), 1);
}

#[test]
fn set_cookie_responses_are_shared_only_when_allowed() {
    let up = Upstream::start("app");
    up.script(
        "/c",
        200,
        &[("cache-control", "max-age=60"), ("set-cookie", "sid=1")],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    let r = get(&gw.url("/c"));
    assert!(status_of(&r).contains("detail=set-cookie"), "{r:?}");
    assert_eq!(get(&gw.url("/c")).body, "body 2");
    let allowed = gateway(&up, "{allow_set_cookie: true}", "");
    get(&allowed.url("/c"));
    assert_eq!(get(&allowed.url("/c")).header("set-cookie"), Some("sid=1"));
    assert_eq!(up.count_path("/c"), 3);
}

#[test]
fn unknown_directives_are_ignored_and_malformed_ones_mean_stale() {
    let up = Upstream::start("app");
    up.script(
        "/unknown",
        200,
        &[("cache-control", "frobnicate=\"yes\", max-age=60, x-ext")],
        "body {n}",
    );
    up.script(
        "/bad",
        200,
        &[("cache-control", "max-age=soon"), ("etag", "\"b\"")],
        "body {n}",
    );
    let gw = gateway(&up, "{}", "");
    get(&gw.url("/unknown"));
    assert_eq!(get(&gw.url("/unknown")).body, "body 1");
    get(&gw.url("/bad"));
    let r = get(&gw.url("/bad"));
    assert_eq!(r.body, "body 1");
    assert!(
        status_of(&r).contains("fwd-status=304"),
        "an invalid max-age is stale: {r:?}"
    );
}

#[test]
fn concurrent_misses_make_one_upstream_request() {
    let up = Upstream::start("app");
    up.script("/slow", 200, &[("cache-control", "max-age=60")], "body {n}");
    up.set_delay(Duration::from_millis(500));
    let gw = gateway(&up, "{}", "");
    let url = gw.url("/slow");
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&url))
        })
        .collect();
    let bodies: Vec<Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(bodies.iter().all(|r| r.status == 200 && r.body == "body 1"));
    assert_eq!(
        up.count_path("/slow"),
        1,
        "100 concurrent misses, one fetch"
    );
    assert!(
        bodies
            .iter()
            .filter(|r| status_of(r).contains("collapsed"))
            .count()
            > 0
    );
}

#[test]
fn waiting_for_a_slow_fill_is_bounded_by_the_lock_timeout() {
    let up = Upstream::start("app");
    up.script(
        "/slower",
        200,
        &[("cache-control", "max-age=60")],
        "body {n}",
    );
    up.set_delay(Duration::from_millis(1500));
    let gw = gateway(&up, "{lock_timeout: 200ms}", "");
    let url = gw.url("/slower");
    let first = {
        let url = url.clone();
        std::thread::spawn(move || get(&url))
    };
    std::thread::sleep(Duration::from_millis(100));
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&url))
        })
        .collect();
    for w in waiters {
        assert_eq!(w.join().unwrap().status, 200);
    }
    assert_eq!(first.join().unwrap().status, 200);
    assert!(
        up.count_path("/slower") > 1,
        "waiters gave up on the lock and went upstream"
    );
}

fn admin_extra(admin_port: u16, cache: &str) -> String {
    format!("admin:\n  address: 127.0.0.1:{admin_port}\n  token: {TOKEN}\ncache:\n{cache}")
}

fn admin_json(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    send_body(
        method,
        &format!("http://127.0.0.1:{port}{path}"),
        &headers,
        body,
    )
}

#[test]
fn the_memory_budget_holds_under_a_flood_of_distinct_urls() {
    let up = Upstream::start("app");
    up.script("/big", 200, &[], &"x".repeat(8 * 1024));
    let admin = free_port();
    let gw = gateway(
        &up,
        "{default_ttl: 60s}",
        &admin_extra(admin, "  memory: 2MiB\n  max_object_size: 64KiB\n"),
    );
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let flood = |prefix: &'static str, n: usize| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let url = gw.url("");
                std::thread::spawn(move || {
                    for i in (t..n).step_by(4) {
                        assert_eq!(get(&format!("{url}/{prefix}/{i}")).status, 200);
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
    };
    flood("warm", 300);
    let before = rss(gw.pid());
    // Small responses: per-entry overhead dominates, so it must be counted in the budget.
    flood("small", 8_000);
    // Each stored entry must be counted whole (headers, keys, bookkeeping), or the memory
    // held would be a multiple of the budget.
    let small_grown = rss(gw.pid()).saturating_sub(before);
    assert!(
        small_grown < (2 << 20) + (5 << 19),
        "RSS grew by {small_grown} bytes"
    );
    // Large ones: the bodies dominate.
    for i in 0..600 {
        up.script(&format!("/big/{i}"), 200, &[], &"x".repeat(8 * 1024));
    }
    flood("big", 600);
    let stats = admin_json(admin, "GET", "/cache", None, "").json();
    let bytes = stats["bytes"].as_u64().unwrap();
    assert!(bytes <= 2 << 20, "{stats}");
    assert!(bytes > 1 << 20, "the budget is used: {stats}");
    assert!(
        stats["evicted_entries"].as_u64().unwrap() > 5_000,
        "{stats}"
    );
    let grown = rss(gw.pid()).saturating_sub(before);
    // 13 MB of responses went through a 2 MiB cache. Large bodies do not fit the holes the
    // small entries left, so glibc's heap holds about two budgets then; never a share of
    // what went through.
    assert!(grown < 8 << 20, "RSS grew by {grown} bytes: {stats}");
}

#[test]
fn purge_by_url_prefix_and_everything_needs_the_admin_token() {
    let up = Upstream::start("app");
    for p in ["/a/1", "/a/2", "/b/1"] {
        up.script(
            p,
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept")],
            "body {n}",
        );
    }
    let admin = free_port();
    let gw = gateway(&up, "{}", &admin_extra(admin, "  purge_method: true\n"));
    let warm = |gw: &Gateway| {
        for p in ["/a/1", "/a/2", "/b/1"] {
            get_h(gw, p, &[("accept", "text/plain")]);
            get_h(gw, p, &[("accept", "application/json")]);
        }
    };
    warm(&gw);
    let host = format!("http://{}", gw.addr);
    let url_body = format!("{{\"url\": \"{host}/a/1\"}}");
    assert_eq!(
        admin_json(admin, "POST", "/cache/purge", None, &url_body).status,
        401
    );
    assert_eq!(
        admin_json(
            admin,
            "POST",
            "/cache/purge",
            Some("wrong-token-wrong-token"),
            &url_body
        )
        .status,
        403
    );
    let r = admin_json(admin, "POST", "/cache/purge", Some(TOKEN), &url_body);
    assert_eq!(r.json()["purged"], 2, "both variants of /a/1: {r:?}");
    let r = admin_json(
        admin,
        "POST",
        "/cache/purge",
        Some(TOKEN),
        &format!("{{\"prefix\": \"{host}/a/\"}}"),
    );
    assert_eq!(r.json()["purged"], 2, "{r:?}");
    let r = admin_json(
        admin,
        "POST",
        "/cache/purge",
        Some(TOKEN),
        "{\"all\": true}",
    );
    assert_eq!(r.json()["purged"], 2, "{r:?}");
    assert_eq!(
        admin_json(admin, "POST", "/cache/purge", Some(TOKEN), "{\"bogus\": 1}").status,
        400
    );
    warm(&gw);
    assert_eq!(up.count_path("/a/1"), 4);
    // PURGE on the proxy port, when switched on, takes the same token.
    let purge = |auth: &str| {
        raw(
            gw.addr,
            &format!(
                "PURGE /b/1 HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
                gw.addr
            ),
        )
    };
    assert!(purge("").starts_with("HTTP/1.1 401"), "{}", purge(""));
    let r = purge(&format!("Authorization: Bearer {TOKEN}\r\n"));
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("\"purged\":2"),
        "{r}"
    );
    get_h(&gw, "/b/1", &[("accept", "text/plain")]);
    assert_eq!(up.count_path("/b/1"), 5);
}

#[test]
fn a_bypassed_request_behaves_exactly_like_no_cache() {
    let up = Upstream::start("app");
    let gw = gateway(
        &up,
        "{default_ttl: 60s, bypass: [{header: x-debug}, {cookie: session}]}",
        "",
    );
    let plain = Gateway::start(&format!(
        "upstreams:\n  - name: app\n    targets: [{{address: \"{}\"}}]\nroutes:\n  - {{name: api, upstream: app}}\n",
        up.addr
    ));
    let headers = [
        ("x-debug", "1"),
        ("if-none-match", "\"zzz\""),
        ("range", "bytes=0-3"),
    ];
    let a = send("HEAD", &gw.url("/x?q=1"), &headers);
    let b = send("HEAD", &plain.url("/x?q=1"), &headers);
    assert_eq!(status_of(&a), "portico; fwd=bypass");
    let seen_a = up.requests()[0].clone();
    let seen_b = up.requests()[1].clone();
    assert_eq!(seen_a.method, "HEAD", "not turned into a GET");
    assert_eq!(
        seen_a.header("if-none-match"),
        Some("\"zzz\""),
        "conditionals pass through"
    );
    assert_eq!(seen_a.header("range"), Some("bytes=0-3"));
    let names = |r: &Recorded| {
        let mut n: Vec<String> = r.headers.iter().map(|(k, _)| k.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&seen_a), names(&seen_b));
    let mut ha: Vec<&String> = a
        .headers
        .keys()
        .filter(|k| *k != "cache-status" && *k != "x-request-id")
        .collect();
    let mut hb: Vec<&String> = b.headers.keys().filter(|k| *k != "x-request-id").collect();
    ha.sort();
    hb.sort();
    assert_eq!(ha, hb);
    get_h(&gw, "/y", &[("cookie", "session=1")]);
    get_h(&gw, "/y", &[("cookie", "session=1")]);
    assert_eq!(up.count_path("/y"), 2);
}

#[test]
fn the_cache_sits_after_auth_and_keeps_consumers_apart() {
    let up = Upstream::start("app");
    up.script("/me", 200, &[("cache-control", "max-age=60")], "body {n}");
    up.script(
        "/shared",
        200,
        &[("cache-control", "max-age=60")],
        "body {n}",
    );
    let a = portico::policy::auth::api_key::hash_key("key-a");
    let b = portico::policy::auth::api_key::hash_key("key-b");
    let gw = Gateway::start(&format!(
        r#"consumers:
  - {{name: a, api_keys: ["{a}"]}}
  - {{name: b, api_keys: ["{b}"]}}
upstreams:
  - name: app
    targets: [{{address: "{up}"}}]
routes:
  - name: mine
    match: {{path_exact: /me}}
    upstream: app
    access: {{providers: [api_key]}}
    cache: {{key: {{consumer: true}}}}
  - name: shared
    upstream: app
    access: {{providers: [api_key]}}
    cache: {{}}
"#,
        up = up.addr
    ));
    let ka = [("x-api-key", "key-a")];
    let kb = [("x-api-key", "key-b")];
    assert_eq!(get_h(&gw, "/me", &ka).body, "body 1");
    assert_eq!(
        get(&gw.url("/me")).status,
        401,
        "a cached response is no way around auth"
    );
    assert_eq!(get_h(&gw, "/me", &ka).body, "body 1");
    assert_eq!(
        get_h(&gw, "/me", &kb).body,
        "body 2",
        "b has an entry of its own"
    );
    assert_eq!(get_h(&gw, "/me", &kb).body, "body 2");
    // Without the consumer in the key, a response to an authenticated caller is not stored
    // (unless the route says its answers are the same for everyone).
    let r = get_h(&gw, "/shared", &ka);
    assert!(status_of(&r).contains("detail=authenticated"), "{r:?}");
    assert_eq!(get_h(&gw, "/shared", &kb).body, "body 2");
}

#[test]
fn bad_cache_config_is_refused_with_its_path() {
    let (ok, text) = check_config(
        "listeners: [{address: \"127.0.0.1:1\"}]\ncache:\n  memory: 10KiB\nupstreams:\n  - name: app\n    targets: [{address: \"127.0.0.1:2\"}]\nroutes:\n  - name: api\n    upstream: app\n    cache:\n      methods: [POST]\n      key: {query: shuffled}\n",
    );
    assert!(!ok, "{text}");
    assert!(text.contains("cache.memory"), "{text}");
    assert!(text.contains("routes[0].cache.key.query"), "{text}");
    let (ok, text) =
        check_config("listeners: [{address: \"127.0.0.1:1\"}]\ncache:\n  purge_method: true\n");
    assert!(!ok);
    assert!(
        text.contains("cache.purge_method: PURGE needs an admin token"),
        "{text}"
    );
}

#[test]
fn large_heads_misses_and_ranges_are_handled_whole() {
    let up = Upstream::start("app");
    let big = "y".repeat(100 * 1024);
    up.script("/big", 200, &[("cache-control", "max-age=60")], &big);
    let chunked = [
        ("cache-control", "max-age=60"),
        ("transfer-encoding", "chunked"),
    ];
    up.script("/stream", 200, &chunked, &big);
    up.script(
        "/doc",
        200,
        &[("cache-control", "max-age=60")],
        "0123456789",
    );
    let gw = gateway(
        &up,
        "{}",
        &admin_extra(free_port(), "  max_object_size: 64KiB\n"),
    );
    for _ in 0..2 {
        let r = get(&gw.url("/big"));
        assert_eq!(
            (r.status, r.body.len()),
            (200, big.len()),
            "passed through whole"
        );
    }
    assert_eq!(up.count_path("/big"), 2, "over max_object_size: not stored");
    // Without a Content-Length the size shows only while streaming: the client still gets
    // every byte, the cache just does not keep it.
    for _ in 0..2 {
        let r = get(&gw.url("/stream"));
        assert_eq!((r.status, r.body.len()), (200, big.len()));
    }
    assert_eq!(up.count_path("/stream"), 2);
    // A HEAD miss fetches the full GET for the cache and answers without a body.
    let head = send("HEAD", &gw.url("/doc"), &[]);
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(up.last("/doc").unwrap().method, "GET");
    let full = get(&gw.url("/doc"));
    assert_eq!(full.body, "0123456789");
    assert!(status_of(&full).contains("hit"), "{full:?}");
    let part = get_h(&gw, "/doc", &[("range", "bytes=2-5")]);
    assert_eq!((part.status, part.body.as_str()), (206, "2345"), "{part:?}");
    assert_eq!(part.header("content-range"), Some("bytes 2-5/10"));
    assert_eq!(up.count_path("/doc"), 1);
}

#[test]
fn stale_windows_run_from_when_the_response_became_stale() {
    let up = Upstream::start("app");
    // 99 s stale on arrival: both 10 s windows are long over.
    let old = [
        (
            "cache-control",
            "max-age=1, stale-while-revalidate=10, stale-if-error=10",
        ),
        ("age", "100"),
    ];
    up.script("/old", 200, &old, "old {n}");
    // `Age: 7200, 0` is 7200 s old, not 0.
    up.script(
        "/listed",
        200,
        &[("cache-control", "max-age=60"), ("age", "7200, 0")],
        "l {n}",
    );
    let gw = gateway(&up, "{}", "");
    assert_eq!(get(&gw.url("/old")).body, "old 1");
    let second = get(&gw.url("/old"));
    assert_eq!(second.body, "old 2", "not served stale: {second:?}");
    up.script("/old", 503, &[], "down");
    let failed = get(&gw.url("/old"));
    assert_eq!(failed.status, 503, "no stale-if-error answer: {failed:?}");
    assert_eq!(get(&gw.url("/listed")).body, "l 1");
    assert_eq!(get(&gw.url("/listed")).body, "l 2");
    assert_eq!(up.count_path("/listed"), 2);
}

#[test]
fn a_stale_if_error_answer_names_the_upstream_status_and_its_connection_fate() {
    let up = Upstream::start("app");
    up.script(
        "/s",
        200,
        &[("cache-control", "max-age=1, stale-if-error=60")],
        "old",
    );
    let gw = gateway(&up, "{}", "");
    assert_eq!(get(&gw.url("/s")).body, "old");
    // Stale from here on (max-age=1).
    std::thread::sleep(Duration::from_millis(2100));
    up.script("/s", 503, &[], "down");
    let r = get(&gw.url("/s"));
    assert_eq!((r.status, r.body.as_str()), (200, "old"));
    let status = status_of(&r);
    assert!(status.contains("fwd=stale; fwd-status=503"), "{status}");
    // With the upstream gone: no status to name, and the connection is announced closed.
    up.stop();
    let out = raw(
        gw.addr,
        &format!("GET /s HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr),
    );
    let lower = out.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{out}");
    assert!(lower.contains("connection: close"), "{out}");
    assert!(!lower.contains("fwd-status"), "{out}");
}

#[test]
fn targeted_cache_control_fields_take_precedence() {
    let up = Upstream::start("app");
    up.script(
        "/cdn",
        200,
        &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ],
        "cdn {n}",
    );
    up.script(
        "/own",
        200,
        &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "no-store"),
            ("portico-cache-control", "max-age=30"),
        ],
        "own {n}",
    );
    up.script(
        "/cdn-off",
        200,
        &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "no-store"),
        ],
        "off {n}",
    );
    let gw = gateway(&up, "{}", "");
    for _ in 0..2 {
        let r = get(&gw.url("/cdn"));
        assert_eq!(r.body, "cdn 1");
        // Not ours alone: passed on for caches further down.
        assert_eq!(r.header("cdn-cache-control"), Some("max-age=60"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let r = get(&gw.url("/own"));
        assert_eq!(r.body, "own 1");
        assert_eq!(
            r.header("portico-cache-control"),
            None,
            "ours is not forwarded"
        );
    }
    // CDN-Cache-Control: no-store wins over Cache-Control for this cache.
    get(&gw.url("/cdn-off"));
    assert_eq!(get(&gw.url("/cdn-off")).body, "off 2");
}

#[test]
fn responses_to_authenticated_callers_are_not_shared() {
    let up = Upstream::start("app");
    let key = portico::policy::auth::api_key::hash_key("key-a");
    let config = |share: &str| {
        format!(
            r#"
consumers:
  - {{name: a, api_keys: ["{key}"]}}
upstreams:
  - name: app
    targets: [{{address: "{up}"}}]
routes:
  - name: api
    upstream: app
    access: {{providers: [api_key], anonymous: true}}
    cache: {{{share}}}
"#,
            up = up.addr
        )
    };
    up.script(
        "/me",
        200,
        &[("cache-control", "public, max-age=60")],
        "personal {n}",
    );
    let gw = Gateway::start(&config(""));
    let mine = get_h(&gw, "/me", &[("x-api-key", "key-a")]);
    assert_eq!(mine.body, "personal 1");
    assert!(
        status_of(&mine).contains("detail=authenticated"),
        "{mine:?}"
    );
    let anonymous = get(&gw.url("/me"));
    assert_eq!(anonymous.body, "personal 2", "not consumer a's answer");
    drop(gw);
    // A route that says its answers are the same for everyone shares them.
    up.clear();
    up.script(
        "/me",
        200,
        &[("cache-control", "public, max-age=60")],
        "shared {n}",
    );
    let gw = Gateway::start(&config("share_authenticated: true"));
    assert_eq!(
        get_h(&gw, "/me", &[("x-api-key", "key-a")]).body,
        "shared 1"
    );
    assert_eq!(get(&gw.url("/me")).body, "shared 1");
}
