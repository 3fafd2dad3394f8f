//! Per-route policies, each compiled from its config section at load.

pub mod access;
pub mod auth;
pub mod body_limit;
pub mod compression;
pub mod contract;
pub mod cors;
pub mod ip_filter;
pub mod maintenance;
pub mod mirror;
pub mod pipeline;
pub mod ratelimit;
pub mod split;
