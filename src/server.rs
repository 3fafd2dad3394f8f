//! Builds the Pingora server from a [`Runtime`]: listeners, the proxy service and the
//! background health checks.

use crate::admin::AdminApi;
use crate::lifecycle::Signals;
use crate::observe::access_log::LazyAccessLog;
use crate::policy::auth::jwks;
use crate::proxy::Gateway;
use crate::runtime::Runtime;
use crate::upstream::health;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_core::services::ServiceWithDependents;
use std::sync::Arc;

/// How the process was asked to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartMode {
    /// Take the listening sockets over from a running old process (`-u`).
    pub upgrade: bool,
    /// Fork into the background (`-d`).
    pub daemon: bool,
}

/// Pingora's server settings from ours; every default that would surprise an operator
/// (300 s grace, files under /tmp) is replaced by the config's values.
pub fn server_conf(rt: &Runtime, mode: StartMode) -> ServerConf {
    let s = &rt.server;
    ServerConf {
        daemon: mode.daemon,
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        error_log: s.error_log.clone(),
        grace_period_seconds: Some(s.grace_period.ceil_secs()),
        graceful_shutdown_timeout_seconds: Some(s.shutdown_timeout.ceil_secs()),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        ..ServerConf::default()
    }
}

/// Starts the periodic work of the current config: active health checks of every pool and
/// key set refreshes of every JWT provider with a `jwks_url`.
struct BackgroundTasks {
    runtime: Arc<ArcSwap<Runtime>>,
    access_log: Option<Arc<LazyAccessLog>>,
}

#[async_trait]
impl BackgroundService for BackgroundTasks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let rt = self.runtime.load();
        for pool in &rt.upstreams {
            health::spawn(pool);
        }
        for provider in rt.auth.jwt.values() {
            if let Some(remote) = &provider.remote {
                jwks::spawn_refresh(remote);
            }
        }
        if let Some(log) = self.access_log.clone() {
            // Started here, after any daemonizing fork; SIGUSR1 reopens it for logrotate.
            log.get();
            tokio::spawn(async move {
                let Ok(mut usr1) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                else {
                    return;
                };
                while usr1.recv().await.is_some() {
                    if let Some(l) = log.get() {
                        l.reopen();
                    }
                }
            });
        }
        let _ = shutdown.changed().await;
    }
}

/// A built server with what it needs at the end of its life.
pub struct Built {
    pub server: Server,
    access_log: Option<Arc<LazyAccessLog>>,
    drain_delay: std::time::Duration,
}

impl Built {
    /// Run until told to stop; write out the access log's last lines, then exit.
    pub fn run(self) -> ! {
        self.server.run(RunArgs {
            shutdown_signal: Box::new(Signals {
                drain_delay: self.drain_delay,
            }),
        });
        if let Some(log) = self.access_log.as_ref().and_then(|l| l.started()) {
            log.flush();
        }
        std::process::exit(0)
    }
}

/// A server ready to run: the gateway on its listeners plus its background services.
/// `companions` (the demo's example services) start before the gateway and its checks.
pub fn build(
    rt: Runtime,
    mode: StartMode,
    companions: Vec<Box<dyn ServiceWithDependents>>,
) -> Built {
    let conf = server_conf(&rt, mode);
    let opt = Opt {
        upgrade: mode.upgrade,
        daemon: mode.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let companions = server.add_services(companions);
    let listeners = rt.listeners.clone();
    let drain_delay = rt.server.drain_delay.0;
    let admin_address = rt.admin.as_ref().map(|a| a.address);
    let access_log = rt
        .access_log
        .clone()
        .map(|t| Arc::new(LazyAccessLog::new(t)));
    let runtime = Arc::new(ArcSwap::from_pointee(rt));
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(runtime.clone(), access_log.clone()),
        "portico gateway",
    );
    for addr in listeners {
        proxy.add_tcp(&addr.to_string());
    }
    let gateway = server.add_service(proxy);
    let checks = server.add_service(background_service(
        "health checks and key refresh",
        BackgroundTasks {
            runtime: runtime.clone(),
            access_log: access_log.clone(),
        },
    ));
    if let Some(addr) = admin_address {
        let mut admin = Service::new("portico admin".into(), AdminApi::new(runtime.clone()));
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    gateway.add_dependencies(&companions);
    checks.add_dependencies(&companions);
    Built {
        server,
        access_log,
        drain_delay,
    }
}
