//! Portico: an API gateway on Cloudflare's Pingora.
//!
//! A request flows through [`proxy::Gateway`], which looks everything up in an immutable
//! [`runtime::Runtime`] built once from the YAML config ([`config`]).

pub mod admin;
pub mod cache;
pub mod canonical;
pub mod clock;
pub mod compose;
pub mod config;
pub mod control;
pub mod demo;
pub mod error_response;
pub mod explain;
pub mod fleet;
pub mod forwarding;
pub mod http_reply;
pub mod lifecycle;
pub mod observe;
pub mod outbound;
pub mod periodic;
pub mod policy;
pub mod proxy;
pub mod random;
pub mod redis_link;
pub mod reload;
pub mod request_parts;
pub mod route;
pub mod router;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod transform;
pub mod upstream;
