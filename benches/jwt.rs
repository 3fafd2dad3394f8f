//! JWT verification cost per request: HS256, RS256 and ES256, on a cache miss (full
//! signature check) and through the verified-token cache.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use futures::executor::block_on;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pingora_http::RequestHeader;
use portico::policy::auth::claims::{ClaimMapping, Source};
use portico::policy::auth::jwks::KeySet;
use portico::policy::auth::jwt::{JwtProvider, ProviderSpec};
use portico::policy::auth::Verification;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &[u8] = b"a-bench-secret-that-is-long-enough-for-hs256";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn provider(alg: Algorithm) -> JwtProvider {
    let mut keys = KeySet::default();
    match alg {
        Algorithm::HS256 => keys.keys.push(portico::policy::auth::jwks::KeyEntry {
            kid: None,
            key: jsonwebtoken::DecodingKey::from_secret(SECRET).unwrap(),
            alg: None,
        }),
        Algorithm::RS256 => keys.add_pem(&fixture("rsa_public.pem")).unwrap(),
        _ => keys.add_pem(&fixture("ec256_public.pem")).unwrap(),
    }
    JwtProvider::new(ProviderSpec {
        name: "bench".into(),
        algorithms: vec![alg],
        issuer: Some("https://id.test".into()),
        audiences: vec!["portico".into()],
        leeway: Duration::from_secs(30),
        required_claims: vec![],
        static_keys: keys,
        remote: None,
        sources: vec![Source::Bearer],
        mapping: ClaimMapping {
            consumer_from: vec!["sub".into()],
            forward: vec![],
            consumer_groups: Arc::default(),
            hide_header: None,
            hide_query: None,
        },
    })
}

fn token(alg: Algorithm) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET).unwrap(),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap(),
        _ => EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).unwrap(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "ada", "iss": "https://id.test", "aud": "portico",
        "exp": now + 3600, "scope": "orders:read orders:write",
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt");
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let p = provider(alg);
        let t = token(alg);
        group.bench_function(format!("{alg:?}/miss"), |b| {
            b.iter(|| black_box(block_on(p.verify(&t)).unwrap()))
        });
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", format!("Bearer {t}"))
            .unwrap();
        assert!(matches!(
            block_on(p.authenticate(&req)),
            Verification::Accepted(_)
        ));
        group.bench_function(format!("{alg:?}/cached"), |b| {
            b.iter(|| black_box(block_on(p.authenticate(&req))))
        });
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
