//! Which responses a route compresses; the compressing is Pingora's response compression
//! module (gzip, brotli, zstd by the client's Accept-Encoding).

use crate::config::CompressionSpec;
use pingora_http::ResponseHeader;

pub struct Compression {
    pub level: u32,
    min_size: u64,
    /// Exact types, and `type/` prefixes from `type/*`.
    types: Vec<String>,
    prefixes: Vec<String>,
}

impl Compression {
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
