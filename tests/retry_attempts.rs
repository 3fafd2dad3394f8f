//! Every attempt at an upstream counts against the route's or upstream's allowance and the
//! retry budget, whichever Pingora hook triggers it: a connection the upstream drops before
//! answering is not tried again without limit.

mod common;
use common::*;

fn gateway(up: &Upstream, upstream_extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
upstreams:
  - name: up
    targets: [{{address: "{addr}"}}]
{upstream_extra}
routes:
  - name: r
    upstream: up
"#,
        addr = up.addr
    ))
}

#[test]
fn a_dropped_connection_is_tried_as_often_as_allowed() {
    for (extra, attempts) in [("    retries: 0\n", 1), ("", 3)] {
        let up = Upstream::start("up");
        up.set_fault(Fault::ResetBeforeHead);
        let gw = gateway(&up, extra);
        // Warm the pool first: a kept-alive connection the upstream drops is where
        // Pingora's own retry-on-reused-connection comes in.
        up.set_fault(Fault::None);
        assert_eq!(get(&gw.url("/warm")).status, 200);
        up.set_fault(Fault::ResetBeforeHead);
        let r = get(&gw.url("/x"));
        assert_eq!(r.status, 502, "{r:?}");
        assert_eq!(up.count_path("/x"), attempts, "retries config: {extra:?}");
    }
}
