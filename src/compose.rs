//! API composition: one client request answered with a JSON object built from several GETs
//! to upstream pools, made concurrently, each with its own timeout. The calls pick their
//! targets through the pools' balancers and health checks and reuse pooled connections.

use crate::error_response;
use crate::observe::request_id::RequestId;
use crate::policy::pipeline::{Build, Exchange};
use crate::transform::template::{Template, Vars};
use crate::upstream::Pool;
use pingora_core::connectors::http::Connector;
use pingora_http::{RequestHeader, ResponseHeader};
use serde_json::{Map, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A call's response body may be at most this large.
const MAX_CALL_BODY: usize = 4 << 20;

pub struct Call {
    pub key: String,
    pub pool: Arc<Pool>,
    pub path: Template,
    pub timeout: Duration,
    pub required: bool,
}

pub struct Compose {
    pub calls: Vec<Call>,
}

/// The combined answer, or the required call that failed and why.
pub type Composed = Result<Value, (String, String)>;

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

async fn fetch(call: &Call, path: &str, fwd: &Forward<'_>) -> Result<Value, String> {
    let pool = &call.pool;
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
    req.insert_header(fwd.request_id.header.clone(), fwd.request_id.header_value())
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
    /// `compose` of a route.
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let c = b.route.compose.as_ref()?;
        let mut calls = Vec::new();
        for (k, call) in c.calls.iter().enumerate() {
            let field = format!("compose.calls[{k}]");
            let pool = b.upstream(format_args!("{field}.upstream"), &call.upstream);
            let template = Template::parse(&call.path)
                .map_err(|e| b.fault(format_args!("{field}.path"), e))
                .ok();
            if c.calls[..k].iter().any(|o| o.key == call.key) {
                b.fault(format_args!("{field}.key"), "keys must differ");
            }
            if let (Some(pool), Some(path)) = (pool, template) {
                calls.push(Call {
                    key: call.key.clone(),
                    pool: b.src.pools.get(pool)?.clone(),
                    path,
                    timeout: call.timeout.0,
                    required: call.required,
                });
            }
        }
        if c.calls.is_empty() {
            b.fault("compose.calls", "list at least one call");
        }
        Some(Compose { calls })
    }

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
    pub async fn run(&self, paths: &[String], fwd: &Forward<'_>) -> Composed {
        let results = futures::future::join_all(self.calls.iter().zip(paths).map(
            |(call, path)| async move {
                match tokio::time::timeout(call.timeout, fetch(call, path, fwd)).await {
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

/// The route's policies' say on a response the gateway makes itself.
pub trait LocalResponse {
    fn local_response(
        &self,
        x: &mut Exchange<'_>,
        resp: &mut ResponseHeader,
    ) -> pingora_error::Result<()>;
}

impl Compose {
    /// Answer the request: the calls made concurrently, combined into one JSON object.
    pub async fn answer(
        &self,
        x: &mut Exchange<'_>,
        traceparent: Option<&str>,
        local: &(impl LocalResponse + Sync),
    ) -> pingora_error::Result<()> {
        let vars = Vars::of(x);
        let paths = match self.targets(&vars) {
            Ok(p) => p,
            Err(why) => return error_response::send(x.session, 400, &why, x.request_id, &[]).await,
        };
        let fwd = Forward {
            traceparent,
            request_id: x.request_id,
            consumer: x.state.consumer(),
        };
        match self.run(&paths, &fwd).await {
            Ok(body) => {
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let mut resp = ResponseHeader::build(200, Some(6))?;
                resp.insert_header("content-type", "application/json")?;
                resp.insert_header("content-length", body.len())?;
                resp.insert_header(x.request_id.header.clone(), x.request_id.header_value())?;
                // The route's response policies apply to a composed answer as to a proxied one.
                local.local_response(x, &mut resp)?;
                let head_only = x.session.req_header().method == http::Method::HEAD;
                x.session
                    .write_response_header(Box::new(resp), head_only)
                    .await?;
                if !head_only {
                    x.session
                        .write_response_body(Some(body.into()), true)
                        .await?;
                }
                Ok(())
            }
            Err((key, why)) => {
                log::warn!(
                    "request {} on route {}: required call {key} failed: {why}",
                    x.request_id,
                    x.route
                );
                let message = format!("required call {key:?} failed: {why}");
                error_response::send(x.session, 502, &message, x.request_id, &[]).await
            }
        }
    }
}
