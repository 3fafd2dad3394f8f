//! An OpenAPI operation's request rules, compiled for [`crate::policy::contract`]:
//! parameters (path-item ones unless the operation redefines them), the request body's
//! media types and JSON schema, with local `$ref`s followed.

use super::openapi::{escape_pointer, template_pattern};
use crate::policy::contract::{
    Body, Contract, In, Kind, Parameter, ResponseRule, Scalar, Statuses, MAX_BODY,
};
use crate::request_parts::is_json_media;
use serde_json::{json, Value};

pub struct Operation<'a> {
    pub doc: &'a Value,
    pub item: &'a serde_json::Map<String, Value>,
    pub op: &'a Value,
    pub pointer: &'a str,
    pub name: &'a str,
    pub base: &'a str,
    pub template: &'a str,
    pub max_body: u64,
    pub requests: bool,
    pub responses: bool,
}

/// A fault: the JSON pointer in the document and what is wrong there.
type Fault = (String, String);

pub fn compile(o: &Operation<'_>) -> Result<Contract, Fault> {
    if o.max_body > MAX_BODY {
        return Err((
            o.pointer.to_string(),
            format!("validate.max_body may be {MAX_BODY} bytes at most"),
        ));
    }
    let (pattern, path_names) =
        template_pattern(o.base, o.template, true).map_err(|e| (o.pointer.to_string(), e))?;
    let path = regex::Regex::new(&pattern).map_err(|e| (o.pointer.to_string(), e.to_string()))?;
    // Path-item parameters apply unless the operation redefines the same name and place.
    let mut parameters: Vec<Parameter> = Vec::new();
    let lists = [
        (o.op.get("parameters"), format!("{}/parameters", o.pointer)),
        (
            o.item.get("parameters"),
            o.pointer
                .rsplit_once('/')
                .map_or(String::new(), |(p, _)| format!("{p}/parameters")),
        ),
    ];
    for (list, at) in lists {
        let Some(list) = list else { continue };
        let Some(list) = list.as_array() else {
            return Err((at, "parameters must be a list".into()));
        };
        for (i, p) in list.iter().enumerate() {
            let at = format!("{at}/{i}");
            let p = resolve(o.doc, p, &at)?;
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| (at.clone(), "a parameter needs a name".to_string()))?;
            let location = match p.get("in").and_then(Value::as_str) {
                Some("path") => In::Path,
                Some("query") => In::Query,
                Some("header") => In::Header,
                Some("cookie") => continue,
                other => {
                    return Err((
                        format!("{at}/in"),
                        format!("{other:?} is not path, query, header or cookie"),
                    ))
                }
            };
            if parameters
                .iter()
                .any(|q| q.name == name && q.location == location)
            {
                continue;
            }
            if location == In::Path && !path_names.iter().any(|n| n == name) {
                return Err((
                    at,
                    format!("path parameter {name:?} is not in the path {}", o.template),
                ));
            }
            let schema = p.get("schema").cloned().unwrap_or(json!({}));
            parameters.push(Parameter {
                name: if location == In::Header {
                    name.to_ascii_lowercase()
                } else {
                    name.to_string()
                },
                location,
                required: location == In::Path || p.get("required") == Some(&Value::Bool(true)),
                kind: kind_of(o.doc, &schema),
                schema: validator(o.doc, &schema, &format!("{at}/schema"))?,
            });
        }
    }
    let body = match o.op.get("requestBody") {
        None => None,
        Some(b) => {
            let at = format!("{}/requestBody", o.pointer);
            let b = resolve(o.doc, b, &at)?;
            let content = b.get("content").and_then(Value::as_object).ok_or_else(|| {
                (
                    format!("{at}/content"),
                    "a request body needs content".to_string(),
                )
            })?;
            let mut json_schema = None;
            for (media, m) in content {
                let media = media.to_ascii_lowercase();
                if is_json_media(&media) {
                    if let Some(schema) = m.get("schema") {
                        let at = format!("{at}/content/{}/schema", escape_pointer(&media));
                        json_schema = Some(validator(o.doc, schema, &at)?);
                    }
                }
            }
            Some(Body {
                required: b.get("required") == Some(&Value::Bool(true)),
                media_types: content.keys().map(|k| k.to_ascii_lowercase()).collect(),
                json: json_schema,
            })
        }
    };
    let responses = if o.responses {
        Some(responses(o)?)
    } else {
        None
    };
    Ok(Contract {
        operation: o.name.to_string(),
        requests: o.requests,
        responses,
        path,
        path_names,
        parameters,
        body,
        max_body: o.max_body,
    })
}

/// The operation's documented responses.
fn responses(o: &Operation<'_>) -> Result<Vec<ResponseRule>, Fault> {
    let at = format!("{}/responses", o.pointer);
    let Some(all) = o.op.get("responses").and_then(Value::as_object) else {
        return Err((at, "an operation needs responses".into()));
    };
    let mut rules = Vec::new();
    for (key, r) in all {
        let at = format!("{at}/{}", escape_pointer(key));
        let statuses = match key.as_str() {
            "default" => Statuses::Default,
            k if k.len() == 3 && k.ends_with("XX") => match k[..1].parse::<u16>() {
                Ok(c @ 1..=5) => Statuses::Class(c),
                _ => return Err((at, format!("{k:?} is not a status class"))),
            },
            k => match k.parse::<u16>() {
                Ok(s @ 100..=599) => Statuses::Exact(s),
                _ => return Err((at, format!("{k:?} is not a status"))),
            },
        };
        let r = resolve(o.doc, r, &at)?;
        let mut media_types = Vec::new();
        let mut json_schema = None;
        if let Some(content) = r.get("content").and_then(Value::as_object) {
            for (media, m) in content {
                let media = media.to_ascii_lowercase();
                if is_json_media(&media) && json_schema.is_none() {
                    if let Some(schema) = m.get("schema") {
                        let at = format!("{at}/content/{}/schema", escape_pointer(&media));
                        json_schema = Some(validator(o.doc, schema, &at)?);
                    }
                }
                media_types.push(media);
            }
        }
        rules.push(ResponseRule {
            statuses,
            media_types,
            json: json_schema,
        });
    }
    Ok(rules)
}

/// A local `$ref` (`#/components/...`) followed; other objects as they are.
fn resolve<'a>(doc: &'a Value, v: &'a Value, at: &str) -> Result<&'a Value, Fault> {
    let mut v = v;
    for _ in 0..8 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok(v);
        };
        let Some(pointer) = r.strip_prefix('#') else {
            return Err((
                at.to_string(),
                format!("{r:?}: only references within the document are supported"),
            ));
        };
        v = doc
            .pointer(pointer)
            .ok_or_else(|| (at.to_string(), format!("{r:?} points at nothing")))?;
    }
    Err((at.to_string(), "a chain of $ref too long".into()))
}

/// A validator for `schema`, whose `#/components/...` references resolve in the document.
fn validator(doc: &Value, schema: &Value, at: &str) -> Result<jsonschema::Validator, Fault> {
    let mut root = json!({"allOf": [schema]});
    if let Some(components) = doc.get("components") {
        root["components"] = components.clone();
    }
    jsonschema::validator_for(&root)
        .map_err(|e| (at.to_string(), format!("not a valid schema: {e}")))
}

fn kind_of(doc: &Value, schema: &Value) -> Kind {
    let schema = resolve(doc, schema, "").unwrap_or(schema);
    let scalar = |s: &Value| match s.get("type").and_then(Value::as_str) {
        Some("integer") => Scalar::Integer,
        Some("number") => Scalar::Number,
        Some("boolean") => Scalar::Boolean,
        _ => Scalar::Text,
    };
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => {
            let items = schema
                .get("items")
                .map(|i| resolve(doc, i, "").unwrap_or(i));
            Kind::Array(items.map_or(Scalar::Text, scalar))
        }
        _ => match scalar(schema) {
            Scalar::Integer => Kind::Integer,
            Scalar::Number => Kind::Number,
            Scalar::Boolean => Kind::Boolean,
            Scalar::Text => Kind::Text,
        },
    }
}
