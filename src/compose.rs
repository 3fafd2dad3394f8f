//! API composition: one client request answered with a JSON object built from several GETs
//! to upstream pools, made concurrently, each with its own timeout. The calls pick their
//! targets through the pools' balancers and health checks and reuse pooled connections.

use crate::observe::request_id::RequestId;
use crate::runtime::Runtime;
use crate::transform::template::{Template, Vars};
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;
use serde_json::{Map, Value};
use std::sync::OnceLock;
use std::time::Duration;

/// A call's response body may be at most this large.
const MAX_CALL_BODY: usize = 4 << 20;

pub struct Call {
    pub key: String,
    pub pool: usize,
    pub path: Template,
    pub timeout: Duration,
    pub required: bool,
}

pub struct Compose {
    pub calls: Vec<Call>,
}

/// The combined answer, or the required call that failed and why.
pub type Outcome = Result<Value, (String, String)>;

fn connector() -> &'static Connector {
    static C: OnceLock<Connector> = OnceLock::new();
    C.get_or_init(|| Connector::new(None))
}

/// Headers each call carries from the client request.
pub struct Forward<'a> {
    pub traceparent: Option<&'a str>,
    pub request_id: &'a RequestId,
    pub consumer: Option<&'a str>,
}

async fn fetch(rt: &Runtime, call: &Call, path: &str, fwd: &Forward<'_>) -> Result<Value, String> {
    let pool = rt.upstreams.get(call.pool).ok_or("no such upstream")?;
    let addr = pool
        .select(b"", &[])
        .ok_or_else(|| format!("no healthy target in upstream {:?}", pool.name))?;
    let (peer, host) = pool.peer(&addr).ok_or("target without peer")?;
    let mut req = RequestHeader::build("GET", path.as_bytes(), Some(4))
        .map_err(|e| format!("bad path {path:?}: {e}"))?;
    let set = |req: &mut RequestHeader, k: &'static str, v: &str| {
        req.insert_header(k, v).map_err(|e| e.to_string())
    };
    req.insert_header(http::header::HOST, host.clone())
        .map_err(|e| e.to_string())?;
    set(&mut req, "accept", "application/json")?;
    req.insert_header(fwd.request_id.header.clone(), fwd.request_id.as_str())
        .map_err(|e| e.to_string())?;
    if let Some(c) = fwd.consumer {
        set(&mut req, "x-consumer", c)?;
    }
    if let Some(t) = fwd.traceparent {
        set(&mut req, "traceparent", t)?;
    }
    let c = connector();
    let (mut s, _) = c
        .get_http_session(&*peer)
        .await
        .map_err(|e| format!("could not connect: {}", e.etype().as_str()))?;
    s.write_request_header(Box::new(req))
        .await
        .map_err(|e| e.to_string())?;
    s.finish_request_body().await.map_err(|e| e.to_string())?;
    s.read_response_header().await.map_err(|e| e.to_string())?;
    let status = s.response_header().map(|h| h.status).ok_or("no response")?;
    let mut body = Vec::new();
    while let Some(chunk) = s.read_response_body().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_CALL_BODY {
            return Err(format!("body over {MAX_CALL_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    c.release_http_session(s, &*peer, None).await;
    if !status.is_success() {
        return Err(format!("answered {}", status.as_u16()));
    }
    serde_json::from_slice(&body).map_err(|_| "answered with a body that is not JSON".to_string())
}

impl Compose {
    /// Each call's request target, built from the client's request; an error names the
    /// call whose target a client value cannot be part of.
    pub fn targets(&self, vars: &Vars<'_>) -> Result<Vec<String>, String> {
        self.calls
            .iter()
            .map(|c| {
                c.path
                    .render_target(vars)
                    .map_err(|e| format!("call {:?}: {e}", c.key))
            })
            .collect()
    }

    /// Make the calls (to `paths`, from [`Compose::targets`]) and combine their answers.
    pub async fn run(&self, rt: &Runtime, paths: &[String], fwd: &Forward<'_>) -> Outcome {
        let results = futures::future::join_all(self.calls.iter().zip(paths).map(
            |(call, path)| async move {
                match tokio::time::timeout(call.timeout, fetch(rt, call, path, fwd)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("timed out after {:?}", call.timeout)),
                }
            },
        ))
        .await;
        let mut out = Map::new();
        let mut errors = Map::new();
        for (call, result) in self.calls.iter().zip(results) {
            match result {
                Ok(v) => {
                    out.insert(call.key.clone(), v);
                }
                Err(e) if call.required => return Err((call.key.clone(), e)),
                Err(e) => {
                    out.insert(call.key.clone(), Value::Null);
                    errors.insert(call.key.clone(), Value::String(e));
                }
            }
        }
        if !errors.is_empty() {
            out.insert("errors".into(), Value::Object(errors));
        }
        Ok(Value::Object(out))
    }
}
