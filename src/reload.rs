//! Config reload (SIGHUP or `POST /reload`): read and build the file again; on any fault
//! keep the running config; on success swap it in whole. Requests that started on the old
//! config finish on it (each holds its own `Arc`), new ones take the new one. Pools, key
//! sets, the Redis connection and rate-limit counters carry over where their sections are
//! unchanged (see [`runtime::Carry`]).

use crate::observe::metrics;
use crate::policy::auth::jwks;
use crate::runtime::{self, Runtime};
use crate::upstream::health;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Reloader {
    /// The file the gateway was started from; `None` (the demo) cannot reload.
    path: Option<PathBuf>,
    runtime: Arc<ArcSwap<Runtime>>,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
}

/// What a successful reload did.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub generation: u64,
    pub sha256: String,
    /// Settings that changed in the file but only take effect with a binary upgrade.
    pub needs_upgrade: Vec<String>,
}

impl Reloader {
    pub fn new(path: Option<PathBuf>, runtime: Arc<ArcSwap<Runtime>>) -> Reloader {
        Reloader {
            path,
            runtime,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Reload now. On failure the message lists every fault, and the old config serves on.
    pub async fn reload(&self) -> Result<Applied, String> {
        let _one_at_a_time = self.busy.lock().await;
        let Some(path) = self.path.clone() else {
            return Err("this gateway was not started from a config file".into());
        };
        let running = self.runtime.load_full();
        let old = running.clone();
        // Reading key files and resolving target names blocks: not on the async workers.
        let built = tokio::task::spawn_blocking(move || runtime::reload(&path, &old)).await;
        let new = match built {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => {
                metrics::reload(false);
                log::error!(
                    "config reload refused; generation {} keeps serving:\n{e}",
                    running.info.generation
                );
                return Err(e.to_string());
            }
            Err(e) => {
                metrics::reload(false);
                log::error!("config reload failed: {e}");
                return Err(format!("config reload failed: {e}"));
            }
        };
        let needs_upgrade = needs_upgrade(&running, &new);
        start_new_tasks(&running, &new);
        let applied = Applied {
            generation: new.info.generation,
            sha256: new.info.sha256.clone(),
            needs_upgrade,
        };
        let new = Arc::new(new);
        self.runtime.store(new.clone());
        new.activate_tls();
        for w in new.warnings() {
            log::warn!("{w}");
        }
        metrics::reload(true);
        if applied.needs_upgrade.is_empty() {
            log::info!("config reloaded: generation {}", applied.generation);
        } else {
            log::warn!(
                "config reloaded: generation {}; these changes need a binary upgrade (portico upgrade) to take effect: {}",
                applied.generation,
                applied.needs_upgrade.join(", ")
            );
        }
        Ok(applied)
    }
}

/// Health checks of new pools, refreshes of new key sets and a new tracer's export;
/// carried-over ones keep theirs.
fn start_new_tasks(old: &Runtime, new: &Runtime) {
    if let Some(t) = &new.tracer {
        // Starts only once per tracer: a carried-over one has its task already.
        crate::observe::otel::spawn_export(t);
    }
    for pool in &new.upstreams {
        if !old.upstreams.iter().any(|p| Arc::ptr_eq(p, pool)) {
            health::spawn(pool);
        }
    }
    let old_remotes: Vec<_> = old
        .auth
        .jwt
        .values()
        .filter_map(|p| p.remote.clone())
        .collect();
    for provider in new.auth.jwt.values() {
        if let Some(remote) = &provider.remote {
            if !old_remotes.iter().any(|r| Arc::ptr_eq(r, remote)) {
                jwks::spawn_refresh(remote);
            }
        }
    }
}

/// Settings bound when the process started (sockets, files, threads).
fn needs_upgrade(old: &Runtime, new: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    let mut differs = |name: &str, changed: bool| {
        if changed {
            out.push(name.to_string());
        }
    };
    let (o, n) = (&old.server, &new.server);
    // How each listener was bound: address, TLS or not, the ALPN it offers.
    let shape = |rt: &Runtime| -> Vec<_> {
        rt.listener_specs
            .iter()
            .map(|l| (l.addr, l.tls.as_ref().map(|t| t.http2)))
            .collect()
    };
    differs("listeners", shape(old) != shape(new));
    differs("server.h2c", o.h2c != n.h2c);
    differs(
        "admin.address",
        old.admin.as_ref().map(|a| a.address) != new.admin.as_ref().map(|a| a.address),
    );
    differs("access_log", old.access_log != new.access_log);
    differs("server.threads", o.threads != n.threads);
    differs("server.pid_file", o.pid_file != n.pid_file);
    differs("server.upgrade_sock", o.upgrade_sock != n.upgrade_sock);
    differs("server.error_log", o.error_log != n.error_log);
    differs("server.log_level", o.log_level != n.log_level);
    differs("server.grace_period", o.grace_period != n.grace_period);
    differs(
        "server.shutdown_timeout",
        o.shutdown_timeout != n.shutdown_timeout,
    );
    differs("server.drain_delay", o.drain_delay != n.drain_delay);
    differs("server.read_buffer", o.read_buffer != n.read_buffer);
    differs(
        "server.upstream_keepalive_pool_size",
        o.upstream_keepalive_pool_size != n.upstream_keepalive_pool_size,
    );
    out
}
