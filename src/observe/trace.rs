//! W3C Trace Context: a valid incoming `traceparent` keeps its trace id and the gateway
//! becomes the parent of the upstream call; otherwise a new trace starts here.
//! `tracestate` is passed on untouched.

use http::HeaderValue;

/// The trace this request belongs to and the gateway's own span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
}

fn hex_into<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new span id (never all zeros).
pub fn new_span() -> [u8; 8] {
    loop {
        let id = crate::random::u64().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

impl TraceContext {
    /// Continue the caller's trace when `traceparent` is valid (version 00 layout; future
    /// versions are read by their first four fields), else start one.
    pub fn from_header(traceparent: Option<&[u8]>) -> Self {
        let parsed = traceparent
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| {
                let v = v.trim();
                let mut parts = v.split('-');
                let version = hex_into::<1>(parts.next()?)?;
                let trace: [u8; 16] = hex_into(parts.next()?)?;
                let parent: [u8; 8] = hex_into(parts.next()?)?;
                let flags = hex_into::<1>(parts.next()?)?[0];
                let rest = parts.next();
                let valid = version[0] != 0xff
                    && trace != [0; 16]
                    && parent != [0; 8]
                    && (version[0] != 0 || rest.is_none());
                valid.then_some((trace, parent, flags))
            });
        match parsed {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id: new_span(),
                flags,
                parent: Some(parent),
            },
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&crate::random::u64().to_be_bytes());
                trace_id[8..].copy_from_slice(&new_span());
                TraceContext {
                    trace_id,
                    span_id: new_span(),
                    // A trace the gateway starts is recorded by those who choose to.
                    flags: 0x01,
                    parent: None,
                }
            }
        }
    }

    /// The trace id as 32 lower-case hex digits, without allocating.
    pub fn trace_id_digits(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_into_slice(&self.trace_id, &mut out);
        out
    }

    /// Set the sampled flag to the gateway's own decision (other flags stay).
    pub fn set_sampled(&mut self, sampled: bool) {
        self.flags = (self.flags & !1) | u8::from(sampled);
    }

    /// The `traceparent` sent upstream: same trace, the gateway's span as parent.
    pub fn header_value(&self) -> HeaderValue {
        self.header_value_with(self.span_id)
    }

    /// The `traceparent` naming `span_id` (an upstream attempt's span) as the parent.
    pub fn header_value_with(&self, span_id: [u8; 8]) -> HeaderValue {
        let mut v = [b'-'; 55];
        v[..2].copy_from_slice(b"00");
        hex_into_slice(&self.trace_id, &mut v[3..35]);
        hex_into_slice(&span_id, &mut v[36..52]);
        hex_into_slice(&[self.flags], &mut v[53..55]);
        // Hex digits and dashes are always a valid header value.
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// `bytes` as lower-case hex into `out` (twice as long).
fn hex_into_slice(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TraceContext {
        fn trace_id_hex(&self) -> String {
            String::from_utf8_lossy(&self.trace_id_digits()).into_owned()
        }
    }

    #[test]
    fn continues_valid_traces_and_starts_new_ones() {
        let incoming = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::from_header(Some(incoming));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = t.header_value();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(
            &out[36..52],
            "00f067aa0ba902b7",
            "the gateway is the new parent"
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"garbage",
        ] {
            let t = TraceContext::from_header(Some(bad));
            assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(t.trace_id, [0; 16]);
        }
        let future = TraceContext::from_header(Some(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever",
        ));
        assert_eq!(future.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(TraceContext::from_header(None).header_value().len(), 55);
    }
}
