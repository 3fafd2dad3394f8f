//! OpenTelemetry export: which requests are traced, and their spans sent to a collector
//! over OTLP (`opentelemetry-otlp`, HTTP/protobuf or gRPC). A request hands its finished
//! spans to a bounded queue and never waits: when the queue is full they are dropped and
//! counted. One task per config batches the queue and exports.

use super::trace::TraceContext;
use crate::config::{Fault, OtlpProtocol, TracingSection};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Requests whose spans may wait for export; beyond, their spans are dropped.
const QUEUE_REQUESTS: usize = 2048;
/// Spans sent in one export at most.
const BATCH_SPANS: usize = 512;
/// The longest a span waits for a batch to fill.
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// Which traces are recorded: the caller's choice when it sent one (`parent_based`),
/// else a share of trace ids (the same trace is chosen by every gateway).
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    /// Trace ids whose last 8 bytes (as a number, halved) are under this are recorded.
    bound: u64,
    parent_based: bool,
}

impl Sampler {
    pub fn new(ratio: f64, parent_based: bool) -> Sampler {
        let bound = if ratio >= 1.0 {
            u64::MAX
        } else if ratio > 0.0 {
            // Compared with the id shifted right by one, so that every value fits.
            (ratio * (1u64 << 63) as f64) as u64
        } else {
            0
        };
        Sampler {
            bound,
            parent_based,
        }
    }

    pub fn sampled(&self, t: &TraceContext) -> bool {
        if self.parent_based && t.parent.is_some() {
            return t.flags & 1 == 1;
        }
        if self.bound == u64::MAX {
            return true;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&t.trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.bound
    }
}

/// The export counters.
struct Counters {
    exported: IntCounter,
    queue_full: IntCounter,
    failed: IntCounter,
}

pub struct Tracer {
    /// The section it was made from: a reload that leaves it unchanged keeps this tracer
    /// (and its export task and queue).
    pub section: TracingSection,
    pub sampler: Sampler,
    pub service_name: String,
    queue: mpsc::Sender<Vec<SpanData>>,
    /// Taken by the export task when it starts.
    receiver: Mutex<Option<mpsc::Receiver<Vec<SpanData>>>>,
    counters: Arc<Counters>,
}

fn counters() -> Arc<Counters> {
    let c = |outcome| crate::observe::metrics::trace_spans_counter(outcome);
    Arc::new(Counters {
        exported: c("exported"),
        queue_full: c("dropped_queue_full"),
        failed: c("dropped_export_failed"),
    })
}

/// The endpoint as the exporter takes it: for HTTP, the traces URL.
fn endpoint(section: &TracingSection) -> Result<String, String> {
    let e = &section.otlp.endpoint;
    let uri: http::Uri = e.parse().map_err(|_| format!("{e:?} is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!("{e:?} is not an http:// or https:// URL"));
    }
    Ok(match section.otlp.protocol {
        OtlpProtocol::HttpProtobuf if matches!(uri.path(), "" | "/") => {
            format!("{}/v1/traces", e.trim_end_matches('/'))
        }
        _ => e.clone(),
    })
}

impl Tracer {
    /// The `tracing` section, checked; `None` with faults.
    pub fn from_config(
        section: &TracingSection,
        running: Option<&Arc<Tracer>>,
        faults: &mut Vec<Fault>,
    ) -> Option<Arc<Tracer>> {
        let before = faults.len();
        if let Err(e) = endpoint(section) {
            faults.push(Fault::new("tracing.otlp.endpoint", e));
        }
        if !(0.0..=1.0).contains(&section.sample.ratio) {
            faults.push(Fault::new("tracing.sample.ratio", "a share from 0 to 1"));
        }
        crate::config::positive(section.otlp.timeout, "tracing.otlp.timeout".into(), faults);
        for (name, value) in &section.otlp.headers {
            let ok = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && http::HeaderValue::from_str(value).is_ok();
            if !ok {
                faults.push(Fault::new(
                    format!("tracing.otlp.headers.{name}"),
                    "not a valid header",
                ));
            }
        }
        if section.service_name.is_empty() {
            faults.push(Fault::new("tracing.service_name", "must not be empty"));
        }
        if faults.len() > before {
            return None;
        }
        if let Some(t) = running.filter(|t| &t.section == section) {
            return Some(t.clone());
        }
        let (queue, receiver) = mpsc::channel(QUEUE_REQUESTS);
        Some(Arc::new(Tracer {
            section: section.clone(),
            sampler: Sampler::new(section.sample.ratio, section.sample.parent_based),
            service_name: section.service_name.clone(),
            queue,
            receiver: Mutex::new(Some(receiver)),
            counters: counters(),
        }))
    }

    /// Hand a request's spans to the export task; never waits.
    pub fn send(&self, spans: Vec<SpanData>) {
        let n = spans.len() as u64;
        if self.queue.try_send(spans).is_err() {
            self.counters.queue_full.inc_by(n);
        }
    }
}

/// Start the export task of `tracer` on the current runtime (once). It ends, after a last
/// export, when the tracer's config is gone.
pub fn spawn_export(tracer: &Arc<Tracer>) {
    let Some(receiver) = tracer.receiver.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let section = tracer.section.clone();
    let counters = tracer.counters.clone();
    tokio::spawn(export_loop(section, receiver, counters));
}

fn exporter(section: &TracingSection) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let url = endpoint(section)?;
    let o = &section.otlp;
    let built = match o.protocol {
        OtlpProtocol::HttpProtobuf => {
            // An https collector is reached with rustls on ring, as everything else.
            pingora_rustls::install_default_crypto_provider();
            let headers: HashMap<String, String> = o.headers.clone().into_iter().collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(o.timeout.0)
                .with_headers(headers)
                .build()
        }
        OtlpProtocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &o.headers {
                // Checked when the config was loaded.
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(v),
                ) {
                    headers.insert(k, v);
                }
            }
            let metadata =
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(o.timeout.0)
                .with_metadata(metadata)
                .build()
        }
    };
    let mut exporter = built.map_err(|e| e.to_string())?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(section.service_name.clone())
            .build(),
    );
    Ok(exporter)
}

async fn export_loop(
    section: TracingSection,
    mut receiver: mpsc::Receiver<Vec<SpanData>>,
    counters: Arc<Counters>,
) {
    let exporter = match exporter(&section) {
        Ok(e) => e,
        Err(e) => {
            log::error!("tracing: cannot export to {}: {e}", section.otlp.endpoint);
            // Keep draining, so that what is dropped is counted.
            while let Some(spans) = receiver.recv().await {
                counters.failed.inc_by(spans.len() as u64);
            }
            return;
        }
    };
    let deadline = section.otlp.timeout.0;
    let mut open = true;
    while open {
        let Some(first) = receiver.recv().await else {
            break;
        };
        let mut batch = first;
        let until = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH_SPANS {
            match tokio::time::timeout_at(until, receiver.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        match tokio::time::timeout(deadline, exporter.export(batch)).await {
            Ok(Ok(())) => counters.exported.inc_by(n),
            Ok(Err(e)) => {
                counters.failed.inc_by(n);
                log::warn!("tracing: export to {} failed: {e}", section.otlp.endpoint);
            }
            Err(_) => {
                counters.failed.inc_by(n);
                log::warn!("tracing: export to {} timed out", section.otlp.endpoint);
            }
        }
    }
    let _ = exporter.shutdown();
}
