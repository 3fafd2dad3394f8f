//! TLS: certificates for HTTPS listeners (chosen by SNI, replaced on reload) and the
//! material for TLS to upstreams.

pub mod certs;
pub mod client_auth;
pub mod listeners;
pub mod sni;
pub mod upstream;
