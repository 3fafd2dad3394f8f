//! Per-route policies, each compiled from its config section at load.

pub mod access;
pub mod auth;
pub mod compression;
pub mod cors;
pub mod ip_filter;
pub mod ratelimit;
