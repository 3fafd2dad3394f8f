//! Weighted traffic splits of a route between upstreams (canary, A/B): sticky by a key so a
//! caller stays on one side, with header/cookie overrides that pin a side.

use super::hash_key::HashKey;
use crate::request_parts;
use pingora_http::RequestHeader;
use sha2::Digest;
use std::net::IpAddr;

/// Basis points of traffic: weights are percentages with two decimals.
const SCALE: u32 = 10_000;

pub enum Sticky {
    Key(HashKey),
    Consumer,
}

pub enum Pin {
    Header(http::HeaderName, String),
    Cookie(String, String),
}

pub struct Split {
    /// (cumulative upper bound in basis points, upstream index); the route's own upstream
    /// takes what the others leave.
    sides: Vec<(u32, usize)>,
    sticky: Option<Sticky>,
    pins: Vec<(Pin, usize)>,
}

impl Split {
    /// `sides`: (upstream index, percent) of the other upstreams; `main` takes the rest.
    pub fn new(
        main: usize,
        sides: &[(usize, f64)],
        sticky: Option<Sticky>,
        pins: Vec<(Pin, usize)>,
    ) -> Result<Self, String> {
        let mut bound = 0u32;
        let mut out = Vec::new();
        for &(upstream, percent) in sides {
            if !(0.0..=100.0).contains(&percent) {
                return Err(format!("weight {percent} is not a percentage"));
            }
            bound += (percent * 100.0).round() as u32;
            out.push((bound, upstream));
        }
        if bound > SCALE {
            return Err(format!(
                "the weights add up to {}%, over 100%",
                f64::from(bound) / 100.0
            ));
        }
        out.push((SCALE, main));
        Ok(Split {
            sides: out,
            sticky,
            pins,
        })
    }

    /// The upstream for this request.
    pub fn choose(
        &self,
        req: &RequestHeader,
        client_ip: Option<IpAddr>,
        consumer: Option<&str>,
    ) -> usize {
        for (pin, upstream) in &self.pins {
            let hit = match pin {
                Pin::Header(name, value) => req
                    .headers
                    .get(name)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes())),
                Pin::Cookie(name, value) => {
                    request_parts::cookie(req, name) == Some(value.as_str())
                }
            };
            if hit {
                return *upstream;
            }
        }
        let point = match &self.sticky {
            Some(s) => {
                let mut scratch = [0u8; 16];
                let key: &[u8] = match s {
                    Sticky::Key(k) => k.extract(req, client_ip, &mut scratch),
                    Sticky::Consumer => match consumer {
                        Some(c) => c.as_bytes(),
                        None => request_parts::ip_bytes(client_ip, &mut scratch),
                    },
                };
                // A hash fixed by its spec, so a caller keeps its side across restarts
                // and across gateway hosts.
                let d = sha2::Sha256::digest(key);
                let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
                (n % u64::from(SCALE)) as u32
            }
            None => draw(),
        };
        self.sides
            .iter()
            .find(|(bound, _)| point < *bound)
            .map_or(self.sides[self.sides.len() - 1].1, |(_, u)| *u)
    }
}

/// A uniform draw in `0..10_000` basis points.
pub fn draw() -> u32 {
    ((crate::random::u64() >> 32) as u32) % SCALE
}
