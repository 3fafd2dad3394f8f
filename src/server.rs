//! Builds the Pingora server from a [`Runtime`]: listeners, the proxy service and the
//! background health checks.

use crate::admin::AdminApi;
use crate::lifecycle::{self, Signals};
use crate::observe::access_log::LazyAccessLog;
use crate::policy::auth::jwks;
use crate::proxy::connection::ClientConnections;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::runtime::Runtime;
use crate::tls::client_auth::PeerCertReader;
use crate::upstream::health;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::protocols::ALPN;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_core::services::ServiceWithDependents;
use pingora_rustls::{ClientCertVerifier, ResolvesServerCert};
use std::path::PathBuf;
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
        work_stealing: s.work_stealing,
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
    reloader: Arc<Reloader>,
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
        if let Some(t) = &rt.tracer {
            crate::observe::otel::spawn_export(t);
        }
        // Purges from the other gateways sharing the Redis (idle without one).
        tokio::spawn(crate::fleet::subscribe(self.runtime.clone()));
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
        let reloader = self.reloader.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                log::error!("cannot listen for SIGHUP: config reloads only through the admin API");
                return;
            };
            while hup.recv().await.is_some() {
                log::info!("SIGHUP: reloading the config");
                lifecycle::notify_reloading();
                // The outcome is logged and counted by the reloader.
                let _ = reloader.reload().await;
                lifecycle::notify_ready();
            }
        });
        let _ = shutdown.changed().await;
    }
}

/// A built server with what it needs at the end of its life.
pub struct Built {
    pub server: Server,
    access_log: Option<Arc<LazyAccessLog>>,
    drain_delay: std::time::Duration,
    /// Written once serving, in the foreground (Pingora writes it itself in daemon mode).
    pid_file: Option<PathBuf>,
}

impl Built {
    /// Run until told to stop; write out the access log's last lines, then exit.
    pub fn run(self) -> ! {
        self.server.run(RunArgs {
            shutdown_signal: Box::new(Signals {
                drain_delay: self.drain_delay,
                pid_file: self.pid_file,
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
    config_path: Option<PathBuf>,
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
    let listeners: Vec<_> = rt
        .listener_specs
        .iter()
        .map(|l| {
            let tls = l.tls.as_ref().map(|t| {
                let resolver: Arc<dyn ResolvesServerCert> = t.resolver.clone();
                t.verifier.set(t.client_auth.clone());
                let verifier: Arc<dyn ClientCertVerifier> = t.verifier.clone();
                (resolver, verifier, t.http2)
            });
            (l.addr, tls)
        })
        .collect();
    let h2c = rt.server.h2c;
    let drain_delay = rt.server.drain_delay.0;
    let read_buffer = usize::try_from(rt.server.read_buffer.0).unwrap_or(usize::MAX);
    let admin_address = rt.admin.as_ref().map(|a| a.address);
    let access_log = rt
        .access_log
        .clone()
        .map(|t| Arc::new(LazyAccessLog::new(t)));
    // For `portico reload`/`upgrade`, which need a config file (the demo has none).
    let pid_file =
        (!mode.daemon && config_path.is_some()).then(|| PathBuf::from(&rt.server.pid_file));
    let runtime = Arc::new(ArcSwap::from_pointee(rt));
    let reloader = Arc::new(Reloader::new(config_path, runtime.clone()));
    let mut proxy_app = pingora_proxy::http_proxy(
        &server.configuration,
        Gateway::new(runtime.clone(), access_log.clone()),
    );
    if h2c {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        proxy_app.server_options = Some(options);
    }
    let mut proxy = Service::new(
        "portico gateway".into(),
        ClientConnections::new(proxy_app, runtime.clone(), h2c),
    );
    for (addr, tls) in listeners {
        let buffers = L4BufferSettings::default().read(read_buffer);
        let mut listener = ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers);
        if let Some((resolver, verifier, http2)) = tls {
            // Certificates come from our resolver (chosen by SNI, replaced on reload), and
            // so does the client certificate verifier; a verified client certificate's
            // names are read once, when the handshake completes. Pingora's rustls acceptor
            // allows TLS 1.2 and 1.3 only.
            let Ok(mut settings) = TlsSettings::with_callbacks(Box::new(PeerCertReader)) else {
                log::error!("listener {addr}: TLS settings could not be made; not listening");
                continue;
            };
            settings.set_cert_resolver(resolver);
            settings.set_client_cert_verifier(verifier);
            settings.set_alpn(if http2 { ALPN::H2H1 } else { ALPN::H1 });
            listener = listener.tls(settings);
        }
        proxy.add_listener(listener);
    }
    let gateway = server.add_service(proxy);
    let checks = server.add_service(background_service(
        "health checks and key refresh",
        BackgroundTasks {
            runtime: runtime.clone(),
            access_log: access_log.clone(),
            reloader: reloader.clone(),
        },
    ));
    if let Some(addr) = admin_address {
        let mut admin = Service::new(
            "portico admin".into(),
            AdminApi::new(runtime.clone(), reloader),
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    gateway.add_dependencies(&companions);
    checks.add_dependencies(&companions);
    Built {
        server,
        access_log,
        drain_delay,
        pid_file,
    }
}
