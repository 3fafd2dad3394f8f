//! Overload protection through the real gateway: an upstream's `max_concurrent` answers the
//! excess 503 with Retry-After at once instead of queueing it.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn requests_beyond_max_concurrent_get_503_at_once() {
    let up = Upstream::start("slow");
    up.set_delay(Duration::from_millis(1000));
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:{admin}}}\nupstreams:\n  - {{name: slow, max_concurrent: 2, targets: [{{address: \"{}\"}}]}}\nroutes:\n  - {{name: all, upstream: slow}}\n",
        up.addr
    ));
    let url = gw.url("/work");
    let clients: Vec<_> = (0..5)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                // The first two take the slots before the rest arrive.
                std::thread::sleep(Duration::from_millis(if i < 2 { 0 } else { 300 }));
                let t = Instant::now();
                let r = get(&url);
                (
                    r.status,
                    r.header("retry-after").map(str::to_string),
                    t.elapsed(),
                )
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let served: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let shed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!((served.len(), shed.len()), (2, 3), "{results:?}");
    for (_, retry, took) in &shed {
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(*took < Duration::from_millis(300), "shed after {took:?}");
    }
    // The slots are free again once the first requests ended.
    up.set_delay(Duration::ZERO);
    assert_eq!(get(&url).status, 200);
    let metrics = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    assert!(
        metrics.contains("portico_upstream_overload_rejections_total{upstream=\"slow\"} 3"),
        "{metrics}"
    );
    let (ok, text) = check_config(
        "listeners: [{address: 127.0.0.1:1}]\nupstreams:\n  - {name: u, max_concurrent: 0, targets: [{address: 127.0.0.1:2}]}\nroutes: [{name: r, upstream: u}]\n",
    );
    assert!(
        !ok && text.contains("upstreams[0].max_concurrent"),
        "{text}"
    );
}
