//! Properties of the canonical request path, for arbitrary client paths: canonicalising
//! twice gives what canonicalising once gave, and a service that normalises the path it
//! receives (decoding every escape, removing dot segments, merging slashes) picks the same
//! route as the gateway did. That second property is what makes an `access` rule on a
//! route unbypassable: the gateway decides on the path the service will act on.

use http::{HeaderMap, Method};
use portico::canonical::path::{canonical, PathRules};
use portico::router::{PathMatch, RouteLookup, RouteMatcher, Router};
use proptest::prelude::*;

fn canon(p: &str) -> Option<String> {
    canonical(p.as_bytes(), &PathRules::default())
        .ok()
        .map(|c| c.unwrap_or_else(|| p.to_string()))
}

/// What a lenient origin server does with a path: decode every escape, then resolve dots
/// and merge slashes.
fn origin_view(p: &str) -> String {
    let mut bytes = Vec::new();
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&p[i + 1..i + 3], 16) {
                bytes.push(v);
                i += 3;
                continue;
            }
        }
        bytes.push(b[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut segs: Vec<&str> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    // Merging slashes keeps a trailing one, and so does a final dot segment (RFC 3986
    // §5.2.4): `/a/b/` and `/a/b/.` name a directory, not `/a/b`.
    let last = decoded.rsplit('/').next().unwrap_or("");
    let trailing = matches!(last, "" | "." | "..") && !segs.is_empty();
    format!("/{}{}", segs.join("/"), if trailing { "/" } else { "" })
}

fn router() -> Router {
    let route = |path: PathMatch| RouteMatcher {
        hosts: vec![],
        path,
        methods: vec![],
        headers: vec![],
        priority: 0,
    };
    Router::new(vec![
        route(PathMatch::Prefix("/admin".into())),
        route(PathMatch::Exact("/a/b".into())),
        route(PathMatch::Prefix("/public".into())),
        route(PathMatch::Prefix("/".into())),
    ])
    .expect("router")
}

fn route_of(r: &Router, path: &str) -> Option<usize> {
    match r.find("", &Method::GET, path, &HeaderMap::new()) {
        RouteLookup::Found(i) => Some(i),
        _ => None,
    }
}

/// Paths built from the pieces attacks are made of.
fn attack_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("%2f".to_string()),
        Just("%5c".to_string()),
        Just("\\".to_string()),
        Just("%61".to_string()),
        Just("%20".to_string()),
        Just("admin".to_string()),
        Just("public".to_string()),
        Just("a".to_string()),
        Just("b".to_string()),
        "[a-z%./]{1,4}",
    ];
    prop::collection::vec(piece, 0..10).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn canonical_is_idempotent(raw in attack_path()) {
        if let Some(once) = canon(&raw) {
            let twice = canon(&once);
            prop_assert_eq!(twice.as_deref(), Some(once.as_str()));
        }
    }

    #[test]
    fn any_bytes_are_idempotent(raw in prop::collection::vec(any::<u8>(), 0..40)) {
        let mut path = vec![b'/'];
        path.extend(raw);
        if let Ok(c) = canonical(&path, &PathRules::default()) {
            let once = c.unwrap_or_else(|| String::from_utf8(path.clone()).expect("canonical is ASCII"));
            prop_assert!(once.is_ascii());
            prop_assert_eq!(canonical(once.as_bytes(), &PathRules::default()), Ok(None));
        }
    }

    #[test]
    fn the_service_routes_as_the_gateway_did(raw in attack_path()) {
        let r = router();
        if let Some(forwarded) = canon(&raw) {
            prop_assert_eq!(route_of(&r, &forwarded), route_of(&r, &origin_view(&forwarded)),
                "raw {} forwarded as {}", raw, forwarded);
        }
    }
}
