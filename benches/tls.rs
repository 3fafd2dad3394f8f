//! What a TLS handshake adds on our side: choosing the certificate for the client's server
//! name among many (exact, wildcard, unknown name).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portico::tls::certs::load_pair;
use portico::tls::sni::CertSet;

fn tls(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("portico-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    // 100 certificates: 50 exact names, 50 wildcards.
    let certs = (0..100)
        .map(|i| {
            let name = if i % 2 == 0 {
                format!("host{i}.example.com")
            } else {
                format!("*.zone{i}.example.com")
            };
            let made = rcgen::generate_simple_self_signed(vec![name]).expect("certificate");
            let (cert, key) = (dir.join(format!("{i}.pem")), dir.join(format!("{i}.key")));
            std::fs::write(&cert, made.cert.pem()).expect("write");
            std::fs::write(&key, made.signing_key.serialize_pem()).expect("write");
            load_pair(cert.to_str().unwrap(), key.to_str().unwrap()).expect("load")
        })
        .collect();
    let set = CertSet::new(certs).expect("certificates");
    let mut group = c.benchmark_group("tls");
    group.bench_function("sni_exact_of_100", |b| {
        b.iter(|| set.pick(black_box(Some("host42.example.com"))))
    });
    group.bench_function("sni_wildcard_of_100", |b| {
        b.iter(|| set.pick(black_box(Some("api.zone41.example.com"))))
    });
    group.bench_function("sni_unknown_of_100", |b| {
        b.iter(|| set.pick(black_box(Some("nowhere.test"))))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, tls);
criterion_main!(benches);
