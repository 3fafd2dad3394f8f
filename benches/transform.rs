//! Per-request cost of a route's transforms: header operations with variables, query
//! operations, a JSON body edit, and a traffic-split decision.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora_http::RequestHeader;
use portico::config::{JsonOps as JsonSpec, NameOps};
use portico::policy::auth::Identity;
use portico::policy::split::{Split, Sticky};
use portico::transform::headers::HeaderOps;
use portico::transform::json::JsonOps;
use portico::transform::query::QueryOps;
use portico::transform::template::Vars;
use portico::upstream::hash_key::HashKey;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform");
    let ops: NameOps = serde_yaml::from_str(
        "set: {X-Caller: \"$consumer@$client_ip\", X-Route: \"$route\", X-Static: v1}\nadd: {X-Tag: one}\nremove: [X-Secret]\nrename: {X-Old: X-New}",
    )
    .unwrap();
    let headers = HeaderOps::compile(&ops).unwrap();
    let mut req = RequestHeader::build("GET", b"/v1/items?q=shoes&debug=1&page=2", None).unwrap();
    req.insert_header("x-old", "o").unwrap();
    req.insert_header("x-user", "ada").unwrap();
    let id = Identity {
        consumer: Some("app".into()),
        ..Identity::default()
    };
    let vars = Vars {
        request_id: "rid",
        client_ip: Some("10.0.0.1".parse().unwrap()),
        identity: Some(&id),
        route: "api",
        host: "api.example.com",
        req: &req,
    };
    g.bench_function("headers_5_ops", |b| {
        b.iter(|| {
            let mut up = req.clone();
            headers.apply(&mut up, &vars).unwrap();
            black_box(up)
        })
    });
    g.bench_function("request_clone_baseline", |b| {
        b.iter(|| black_box(req.clone()))
    });
    let q: NameOps =
        serde_yaml::from_str("set: {source: gw}\nremove: [debug]\nrename: {q: search}").unwrap();
    let query = QueryOps::compile(&q).unwrap();
    g.bench_function("query_3_ops", |b| {
        b.iter(|| black_box(query.apply(req.uri.query(), &vars)))
    });
    let j: JsonSpec = serde_yaml::from_str(
        "remove: [/password_hash]\nrename: {/profile/city: /city}\nadd: {/api_version: 2}",
    )
    .unwrap();
    let json = JsonOps::compile(&j).unwrap().unwrap();
    let body = br#"{"id":1,"name":"Ada","password_hash":"x","profile":{"city":"London","zip":"N1"},"tags":["a","b","c"]}"#;
    g.bench_function("json_edit_100B", |b| b.iter(|| black_box(json.edit(body))));
    let split = Split::new(
        0,
        &[(1, 10.0)],
        Some(Sticky::Key(HashKey::parse("header:x-user").unwrap())),
        vec![],
    )
    .unwrap();
    g.bench_function("split_sticky", |b| {
        b.iter(|| black_box(split.choose(&req, None, None)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
