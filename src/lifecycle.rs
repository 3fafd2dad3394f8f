//! Where the process is in its life — starting, ready or draining — for `/readyz`, and the
//! shutdown signals that move it along.

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use sd_notify::NotifyState;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Services are being started.
    Starting,
    /// Every service runs and the listeners accept.
    Ready,
    /// A shutdown or an upgrade began: in-flight requests finish, no new work should come.
    Draining,
}

static STATE: AtomicU8 = AtomicU8::new(0);

pub fn state() -> State {
    match STATE.load(Ordering::Relaxed) {
        0 => State::Starting,
        1 => State::Ready,
        _ => State::Draining,
    }
}

fn set(s: State) {
    STATE.store(s as u8, Ordering::Relaxed);
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Draining => "draining",
        }
    }
}

/// Pingora's signal handling (SIGQUIT upgrade, SIGTERM graceful stop, SIGINT fast stop)
/// plus readiness: draining is reported from the moment a signal arrives, and after
/// SIGTERM the listeners keep accepting for `drain_delay` so that load balancers watching
/// `/readyz` stop sending first.
pub struct Signals {
    pub drain_delay: Duration,
    pub pid_file: Option<PathBuf>,
}

/// Tell systemd (`Type=notify`, `NotifyAccess=all`) that this process serves and is the
/// service's main process — after a binary upgrade that is the new process. Outside
/// systemd this does nothing.
pub fn notify_ready() {
    let pid = std::process::id();
    let _ = sd_notify::notify(&[NotifyState::MainPid(pid), NotifyState::Ready]);
}

pub fn notify_reloading() {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
}

fn enter_draining() {
    set(State::Draining);
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn listen(kind: SignalKind, name: &str) -> Option<Signal> {
    signal(kind)
        .inspect_err(|e| log::error!("cannot listen for {name}: {e}"))
        .ok()
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        // Pingora asks for the signal once every service has been started.
        set(State::Ready);
        if let Some(path) = &self.pid_file {
            // `portico upgrade` waits for the new process's pid here.
            if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
                log::warn!("cannot write the pid file {}: {e}", path.display());
            }
        }
        notify_ready();
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        tokio::select! {
            _ = next(&mut quit) => {
                enter_draining();
                ShutdownSignal::GracefulUpgrade
            }
            _ = next(&mut int) => {
                enter_draining();
                ShutdownSignal::FastShutdown
            }
            _ = next(&mut term) => {
                enter_draining();
                if !self.drain_delay.is_zero() {
                    log::info!(
                        "SIGTERM: reporting not ready for {:?} before the listeners close",
                        self.drain_delay
                    );
                    // Another SIGTERM or a SIGINT cuts the delay short.
                    tokio::select! {
                        _ = tokio::time::sleep(self.drain_delay) => {}
                        _ = next(&mut term) => {}
                        _ = next(&mut int) => return ShutdownSignal::FastShutdown,
                    }
                }
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}
