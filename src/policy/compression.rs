//! Which responses a route compresses; the compressing is Pingora's response compression
//! module (gzip, brotli, zstd by the client's Accept-Encoding).

use super::pipeline::{Build, Exchange, RoutePolicy};
use crate::config::CompressionSpec;
use pingora_core::modules::http::compression::ResponseCompression;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

pub struct Compression {
    pub level: u32,
    min_size: u64,
    /// Exact types, and `type/` prefixes from `type/*`.
    types: Vec<String>,
    prefixes: Vec<String>,
}

impl Compression {
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let spec = b.route.compression.as_ref()?;
        Compression::compile(spec)
            .map_err(|e| b.fault_in("compression", e))
            .ok()
    }

    pub fn compile(c: &CompressionSpec) -> Result<Self, (String, String)> {
        if !(1..=9).contains(&c.level) {
            return Err(("level".into(), "use a level from 1 to 9".into()));
        }
        let (prefixes, types): (Vec<String>, Vec<String>) = c
            .content_types
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .partition(|t| t.ends_with("/*"));
        Ok(Compression {
            level: c.level,
            min_size: c.min_size.0,
            types,
            prefixes: prefixes
                .into_iter()
                .map(|p| p.trim_end_matches('*').to_string())
                .collect(),
        })
    }

    /// Whether this response should be compressed (if the client accepts it).
    pub fn wants(&self, resp: &ResponseHeader) -> bool {
        let Some(ct) = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let typed =
            self.types.contains(&media) || self.prefixes.iter().any(|p| media.starts_with(p));
        let small = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|len| len < self.min_size);
        typed && !small
    }
}

impl RoutePolicy for Compression {
    const NAME: &'static str = "compression";

    fn describe(&self) -> String {
        format!(
            "compresses responses of {} bytes or more when the client accepts it",
            self.min_size
        )
    }

    fn response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
        if self.wants(resp) {
            switch_on(x.session, self.level)?;
        }
        Ok(())
    }
}

/// Switch Pingora's compression module on for this response. It saw the request while it
/// was off (the route was not known yet), so it is shown the client's Accept-Encoding now.
fn switch_on(session: &mut Session, level: u32) -> Result<()> {
    let Some(accept) = session
        .req_header()
        .headers
        .get(http::header::ACCEPT_ENCODING)
        .cloned()
    else {
        return Ok(());
    };
    let mut probe = RequestHeader::build("GET", b"/", Some(1))?;
    probe.insert_header(http::header::ACCEPT_ENCODING, accept)?;
    if let Some(m) = session
        .downstream_modules_ctx
        .get_mut::<ResponseCompression>()
    {
        if m.is_header_phase() {
            m.adjust_level(level);
            m.request_filter(&probe);
        }
    }
    Ok(())
}
