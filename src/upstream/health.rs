//! Active health checks: built from config with the pool, run as one task per pool.

use super::Pool;
use crate::config::{self, CheckKind, Fault, HealthCheck as CheckConfig};
use async_trait::async_trait;
use http::HeaderValue;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::health_check::{
    HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck,
};
use pingora_load_balancing::Backend;
use std::sync::Arc;

/// Logs every change of a target's health, naming its upstream.
struct LogChange {
    upstream: String,
}

#[async_trait]
impl HealthObserve for LogChange {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if healthy {
            log::info!(
                "upstream {}: target {} is healthy again",
                self.upstream,
                target.addr
            );
        } else {
            log::warn!(
                "upstream {}: target {} failed its health check and is out of rotation",
                self.upstream,
                target.addr
            );
        }
    }
}

/// The pingora health check for a config section. Validation has already run.
pub fn build(
    upstream: &str,
    cfg: &CheckConfig,
    tls: Option<(&super::TlsOptions, &str)>,
    http2: bool,
) -> Box<dyn HealthCheck + Send + Sync> {
    let observer = Box::new(LogChange {
        upstream: upstream.to_string(),
    });
    match cfg.kind {
        CheckKind::Tcp => {
            let mut check = TcpHealthCheck::new();
            check.consecutive_success = cfg.healthy_threshold;
            check.consecutive_failure = cfg.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(cfg.timeout.0);
            check.health_changed_callback = Some(observer);
            check
        }
        CheckKind::Http => {
            let host = cfg.host.as_deref().unwrap_or(upstream);
            let mut check = HttpHealthCheck::new(host, tls.is_some());
            if let Some((tls, target_host)) = tls {
                tls.apply(&mut check.peer_template, target_host);
            }
            if http2 {
                // A target that speaks only h2 (gRPC) must be checked in h2.
                super::use_http2(&mut check.peer_template, 1);
            }
            let path = cfg.path.as_deref().unwrap_or("/");
            if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
                // Validation checked host and path, so these cannot fail.
                let _ = req.insert_header("Host", host);
                let _ = req.insert_header("User-Agent", "portico-health-check");
                check.req = req;
            }
            check.consecutive_success = cfg.healthy_threshold;
            check.consecutive_failure = cfg.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(cfg.timeout.0);
            check.peer_template.options.read_timeout = Some(cfg.timeout.0);
            check.peer_template.options.write_timeout = Some(cfg.timeout.0);
            let expected = cfg
                .expected_status
                .as_ref()
                .map_or(200..=299, |s| s.0.clone());
            check.validator = Some(Box::new(move |resp: &ResponseHeader| {
                let status = resp.status.as_u16();
                if expected.contains(&status) {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected health check status", status),
                        format!("expected {}-{}", expected.start(), expected.end()),
                    )
                }
            }));
            check.health_changed_callback = Some(observer);
            Box::new(check)
        }
    }
}

/// Start the periodic checks of `pool` on the current tokio runtime; they end when the
/// config that owns the pool is gone.
pub fn spawn(pool: &Arc<Pool>) {
    let Some(interval) = pool.check_interval else {
        return;
    };
    crate::periodic::spawn_while_alive(pool, move |pool| async move {
        pool.run_health_check().await;
        interval
    });
}

/// Check a `health_check` section.
pub fn check_config(path: &str, hc: &CheckConfig, faults: &mut Vec<Fault>) {
    config::positive(hc.interval, format!("{path}.interval"), faults);
    config::positive(hc.timeout, format!("{path}.timeout"), faults);
    if !hc.interval.0.is_zero() && hc.timeout > hc.interval {
        faults.push(Fault::new(
            format!("{path}.timeout"),
            format!(
                "timeout {} is longer than the interval {}",
                hc.timeout, hc.interval
            ),
        ));
    }
    for (field, n) in [
        ("healthy_threshold", hc.healthy_threshold),
        ("unhealthy_threshold", hc.unhealthy_threshold),
    ] {
        if n == 0 || n > 100 {
            faults.push(Fault::new(
                format!("{path}.{field}"),
                format!("{n} is not between 1 and 100"),
            ));
        }
    }
    match hc.kind {
        config::CheckKind::Http => {
            if let Some(p) = &hc.path {
                if !p.starts_with('/') || http::uri::PathAndQuery::try_from(p.as_str()).is_err() {
                    faults.push(Fault::new(
                        format!("{path}.path"),
                        format!("{p:?} is not a path starting with /"),
                    ));
                }
            }
            if let Some(h) = &hc.host {
                if HeaderValue::from_str(h).is_err() || h.is_empty() {
                    faults.push(Fault::new(format!("{path}.host"), "not a valid Host value"));
                }
            }
        }
        config::CheckKind::Tcp => {
            for (field, set) in [
                ("path", hc.path.is_some()),
                ("host", hc.host.is_some()),
                ("expected_status", hc.expected_status.is_some()),
            ] {
                if set {
                    faults.push(Fault::new(
                        format!("{path}.{field}"),
                        "only HTTP health checks have this; a TCP check only connects",
                    ));
                }
            }
        }
    }
}
