//! The JSON Schema of `portico.yaml` (`conf/portico.schema.json`, `portico schema`), made from
//! the config types so that it cannot drift from what the loader accepts: editors complete
//! and check a config with it before `portico check` runs. The loader still decides; the
//! schema cannot express cross-references (an upstream a route names must exist).

use super::schema::{
    AdminSection, Api, ApiKeySource, CacheSection, Consumer, ExternalAuth, IntrospectionProvider,
    JwtProvider, Listener, RateLimit, RedisSection, Route, ServerSection, StatusRange, TokenSource,
    TracingSection, Upstream, ValidateSpec,
};
use super::{ByteSize, Dur};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

/// The whole file. The loader reads each top-level section on its own (so one bad section
/// does not hide faults in the others); this type only describes the file to editors.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, title = "Portico configuration")]
#[allow(dead_code)]
struct ConfigFile {
    server: Option<ServerSection>,
    /// Where the gateway accepts client connections.
    listeners: Option<Vec<Listener>>,
    /// Addresses (or CIDR ranges) of proxies whose forwarding headers are believed.
    trusted_proxies: Option<Vec<String>>,
    upstreams: Option<Vec<Upstream>>,
    routes: Option<Vec<Route>>,
    consumers: Option<Vec<Consumer>>,
    auth: Option<AuthFile>,
    /// Limits for routes that list none of their own.
    default_rate_limits: Option<Vec<RateLimit>>,
    redis: Option<RedisSection>,
    /// The response cache shared by every route with a `cache` policy.
    cache: Option<CacheSection>,
    /// The admin listener (status, metrics, purge, reload); off without this section.
    admin: Option<AdminSection>,
    /// `stdout` or a file for one JSON line per request; off when unset.
    access_log: Option<String>,
    /// Spans sent to an OpenTelemetry collector over OTLP; off when unset.
    tracing: Option<TracingSection>,
    /// Routes made from OpenAPI 3.0/3.1 documents, one per operation.
    apis: Option<Vec<Api>>,
}

/// `auth`: how credentials are verified.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct AuthFile {
    jwt: Option<Vec<JwtProvider>>,
    /// OAuth 2.0 token introspection (RFC 7662) providers.
    introspection: Option<Vec<IntrospectionProvider>>,
    /// External authorization (forward auth) providers.
    external: Option<Vec<ExternalAuth>>,
    api_keys: Option<ApiKeySource>,
}

/// The schema as JSON, as written to `conf/portico.schema.json`.
pub fn document() -> serde_json::Value {
    let mut schema = schemars::schema_for!(ConfigFile).to_value();
    without_null(&mut schema);
    schema
}

/// An optional field is written out or left out: the schema does not offer `null` for it.
/// (The loader reads a YAML null as "left out", but with `null` as one more alternative a
/// validator can only say that a section matches none of them, not which field is wrong.)
fn without_null(schema: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(map) = schema else {
        if let Value::Array(items) = schema {
            items.iter_mut().for_each(without_null);
        }
        return;
    };
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            map.insert("type".into(), only);
        }
    }
    let is_null = |v: &Value| v.get("type").is_some_and(|t| t == "null");
    if let Some(Value::Array(alternatives)) = map.get("anyOf") {
        if alternatives.len() == 2 && alternatives.iter().any(is_null) {
            let kept = alternatives.iter().find(|a| !is_null(a)).cloned();
            map.remove("anyOf");
            if let Some(Value::Object(kept)) = kept {
                for (k, v) in kept {
                    map.entry(k).or_insert(v);
                }
            }
        }
    }
    map.values_mut().for_each(without_null);
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration with its unit: ms, s, m or h (at most 24h).",
            "pattern": "^\\s*[0-9.]+\\s*(ms|s|m|h)\\s*$",
            "examples": ["250ms", "5s", "2m"]
        })
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of bytes, or a whole number with a unit: B, KiB, MiB, GiB, KB, MB, GB.",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^\\s*[0-9]+\\s*(B|KB|KiB|MB|MiB|GB|GiB)?\\s*$"}
            ],
            "examples": ["64KiB", "1MiB", 4096]
        })
    }
}

impl JsonSchema for StatusRange {
    fn schema_name() -> Cow<'static, str> {
        "StatusRange".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An HTTP status (100-599) or a range of them such as \"200-399\".",
            "anyOf": [
                {"type": "integer", "minimum": 100, "maximum": 599},
                {"type": "string", "pattern": "^\\s*[1-5][0-9]{2}\\s*(-\\s*[1-5][0-9]{2}\\s*)?$"}
            ]
        })
    }
}

impl JsonSchema for TokenSource {
    fn schema_name() -> Cow<'static, str> {
        "TokenSource".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let one = |name: &str| {
            json_schema!({
                "type": "object",
                "properties": {name: {"type": "string"}},
                "required": [name],
                "additionalProperties": false
            })
        };
        json_schema!({
            "description": "Where a token is read from: bearer, {header: NAME}, {query: NAME} or {cookie: NAME}.",
            "anyOf": [
                {"const": "bearer"},
                one("header"),
                one("query"),
                one("cookie")
            ]
        })
    }
}

impl JsonSchema for Api {
    fn schema_name() -> Cow<'static, str> {
        "Api".into()
    }
    /// A route's fields but `name` and `match` (the document gives those), and the API's own.
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let validate = generator.subschema_for::<ValidateSpec>();
        let mut fields = Route::json_schema(generator);
        fields.remove("required");
        if let Some(serde_json::Value::Object(props)) = fields.get_mut("properties") {
            props.remove("name");
            props.remove("match");
            props.insert("validate".into(), validate.to_value());
        }
        fields.insert(
            "description".into(),
            "Route fields without name and match (which an OpenAPI operation gives), and validate."
                .into(),
        );
        let mut schema = fields.clone();
        generator
            .definitions_mut()
            .insert("RouteFields".into(), fields.to_value());
        if let Some(serde_json::Value::Object(props)) = schema.get_mut("properties") {
            let own = json_schema!({
                "name": {"type": "string", "description": "Prefix of the routes' names: NAME.OPERATION_ID."},
                "spec": {"type": "string", "description": "The OpenAPI 3.0/3.1 document (YAML or JSON)."},
                "base_path": {"type": "string", "pattern": "^(/.*[^/])?$", "description": "Prefix of every path of the document, e.g. /v1."},
                "hosts": {"type": "array", "items": {"type": "string"}, "description": "Hosts the routes answer for; any when empty."},
                "operations": {
                    "type": "object",
                    "description": "Route fields for single operations, by operationId.",
                    "additionalProperties": {"$ref": "#/$defs/RouteFields"}
                }
            });
            if let Some(own) = own.as_object() {
                props.extend(own.clone());
            }
        }
        schema.insert("required".into(), serde_json::json!(["name", "spec"]));
        schema.insert(
            "description".into(),
            "An OpenAPI document as a source of routes: every operation becomes a route with these route fields.".into(),
        );
        schema
    }
}
