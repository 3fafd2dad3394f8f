//! Weighted traffic splits of a route between upstreams (canary, A/B): sticky by a key so a
//! caller stays on one side, with header/cookie overrides that pin a side.

use super::pipeline::{Build, Decision, Exchange, RoutePolicy};
use crate::request_parts;
use crate::upstream::hash_key::HashKey;
use http::HeaderName;
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
    /// `split` of a route whose own upstream is `route.upstream`.
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let sp = b.route.split.as_ref()?;
        let main = b
            .src
            .upstreams
            .get(b.route.upstream.as_str())
            .copied()
            .flatten()?;
        let before = b.faults.len();
        let mut sides = Vec::new();
        for (k, side) in sp.to.iter().enumerate() {
            let field = format_args!("split.to[{k}].upstream");
            if let Some(i) = b.upstream(field, &side.upstream) {
                sides.push((i, side.weight));
            }
        }
        let mut pins = Vec::new();
        for (k, p) in sp.pins.iter().enumerate() {
            let field = format!("split.pins[{k}]");
            let pin = match (&p.header, &p.cookie) {
                (Some(h), None) => match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(h) => Pin::Header(h, p.value.clone()),
                    Err(_) => {
                        b.fault(field, format!("{h:?} is not a header name"));
                        continue;
                    }
                },
                (None, Some(c)) => Pin::Cookie(c.clone(), p.value.clone()),
                _ => {
                    b.fault(field, "give one of header or cookie");
                    continue;
                }
            };
            if let Some(i) = b.upstream(format_args!("{field}.upstream"), &p.upstream) {
                pins.push((pin, i));
            }
        }
        let sticky = match sp.sticky.as_deref() {
            None => None,
            Some("consumer") => Some(Sticky::Consumer),
            Some(k) => match HashKey::parse(k) {
                Ok(k) => Some(Sticky::Key(k)),
                Err(e) => {
                    b.fault("split.sticky", e);
                    None
                }
            },
        };
        if b.faults.len() > before {
            return None;
        }
        Split::new(main, &sides, sticky, pins)
            .map_err(|e| b.fault("split.to", e))
            .ok()
    }

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

impl RoutePolicy for Split {
    const NAME: &'static str = "split";

    fn describe(&self) -> String {
        let mut out = format!(
            "sends shares of traffic to {} other upstream(s)",
            self.sides.len()
        );
        if !self.pins.is_empty() {
            out.push_str(&format!("; {} pin(s) by header or cookie", self.pins.len()));
        }
        if self.sticky.is_some() {
            out.push_str("; sticky per client");
        }
        out
    }

    async fn request(&self, x: &mut Exchange<'_>) -> Decision {
        let consumer = x.state.consumer();
        let upstream = self.choose(x.session.req_header(), x.state.client_ip, consumer);
        x.state.upstream = Some(upstream);
        Decision::Continue
    }
}

/// A uniform draw in `0..10_000` basis points.
pub fn draw() -> u32 {
    ((crate::random::u64() >> 32) as u32) % SCALE
}
