//! Routes from OpenAPI 3.0/3.1 documents (`apis[]`): one route per operation, matched by its
//! method and its path template (`{id}` is one whole segment or part of one, never a `/`),
//! with the API's route fields (and `validate`), then the operation's `x-portico` extension, then the
//! config's `operations` entry for its `operationId`. Faults name the document and the JSON
//! pointer of what is wrong in it.

use super::operation as contract;
use crate::config::{Api, Config, Fault, ResponseCheck, Route, ValidateSpec};
use crate::policy::contract::MAX_BODY;
use serde_json::Value;
use std::collections::HashSet;

/// The methods an OpenAPI path item can hold operations for.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A route made from one operation.
#[derive(Debug, Clone)]
pub struct ApiRoute {
    /// YAML path of the operation's route, for faults: `apis[0].operations.getUser`.
    pub path: String,
    /// The path as the document writes it, under the base path: `/v1/users/{id}`.
    pub template: String,
    pub route: Route,
    /// The operation's request rules, when the API validates requests.
    pub contract: Option<std::sync::Arc<crate::policy::contract::Contract>>,
}

/// Every operation of every document as a route, in document order; faults for what
/// cannot become one.
pub fn expand(cfg: &Config, faults: &mut Vec<Fault>) -> Vec<ApiRoute> {
    let mut routes = Vec::new();
    for (i, api) in cfg.apis.iter().enumerate() {
        let at = cfg.item_path("apis", i);
        expand_one(api, &at, &mut routes, faults);
    }
    routes
}

fn expand_one(api: &Api, at: &str, out: &mut Vec<ApiRoute>, faults: &mut Vec<Fault>) {
    let doc = match read_document(&api.spec) {
        Ok(doc) => doc,
        Err(e) => return faults.push(Fault::new(format!("{at}.spec"), e)),
    };
    let spec_fault = |pointer: &str, message: String| {
        Fault::new(
            format!("{at}.spec"),
            format!("{}#{pointer}: {message}", api.spec),
        )
    };
    match doc.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0") || v.starts_with("3.1") => {}
        other => {
            return faults.push(spec_fault(
                "/openapi",
                format!("{other:?} is not an OpenAPI 3.0 or 3.1 version"),
            ))
        }
    }
    if !api.base_path.is_empty()
        && (!api.base_path.starts_with('/') || api.base_path.ends_with('/'))
    {
        faults.push(Fault::new(
            format!("{at}.base_path"),
            "must start with / and not end with one (e.g. /v1)",
        ));
        return;
    }
    // The route fields every operation shares, checked once here rather than per operation.
    let shared = with_match(api, &api.policies, &api.name, ("path_exact", "/"), &[]);
    if let Err((field, message)) = route_from(shared) {
        return faults.push(Fault::new(join(at, &field), message));
    }
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return faults.push(spec_fault("/paths", "no paths object".into()));
    };
    let mut ids = HashSet::new();
    let first = out.len();
    for (template, item) in paths {
        let pointer = format!("/paths/{}", escape_pointer(template));
        if !template.starts_with('/') {
            faults.push(spec_fault(&pointer, "a path must start with /".into()));
            continue;
        }
        let Some(item) = item.as_object() else {
            faults.push(spec_fault(&pointer, "a path item must be an object".into()));
            continue;
        };
        if item.contains_key("$ref") {
            faults.push(spec_fault(
                &pointer,
                "path items by $ref are not supported; write the operations here".into(),
            ));
            continue;
        }
        // A path without parameters is matched exactly (a hash lookup); one with them by
        // an anchored regex, which the router finds by its literal directory.
        let literal = format!("{}{template}", api.base_path);
        let matched = match template_regex(&api.base_path, template) {
            Ok(_) if !template.contains('{') => ("path_exact", literal),
            Ok(r) => ("path_regex", r),
            Err(e) => {
                faults.push(spec_fault(&pointer, e));
                continue;
            }
        };
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let op_pointer = format!("{pointer}/{method}");
            let id = match op.get("operationId") {
                Some(Value::String(id)) if !id.is_empty() => id.clone(),
                None => generated_id(method, template),
                Some(_) => {
                    faults.push(spec_fault(
                        &format!("{op_pointer}/operationId"),
                        "must be a non-empty string".into(),
                    ));
                    continue;
                }
            };
            if !ids.insert(id.clone()) {
                faults.push(spec_fault(
                    &format!("{op_pointer}/operationId"),
                    format!("operationId {id:?} is used twice"),
                ));
                continue;
            }
            let mut fields = api.policies.clone();
            if let Some(ext) = op.get("x-portico") {
                match serde_yaml::to_value(ext) {
                    Ok(serde_yaml::Value::Mapping(m)) => merge(&mut fields, m),
                    _ => {
                        faults.push(spec_fault(
                            &format!("{op_pointer}/x-portico"),
                            "must be an object of route fields".into(),
                        ));
                        continue;
                    }
                }
            }
            let path = format!("{at}.operations.{id}");
            if let Some(over) = api.operations.get(&id) {
                match over {
                    serde_yaml::Value::Mapping(m) => merge(&mut fields, m.clone()),
                    _ => {
                        faults.push(Fault::new(path, "must be a mapping of route fields"));
                        continue;
                    }
                }
            }
            // `validate` is the API's, not a route field; an operation may set its own.
            let validate = match fields.remove("validate") {
                None => api.validate.clone(),
                Some(v) => match serde_yaml::from_value::<ValidateSpec>(v) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        faults.push(Fault::new(format!("{path}.validate"), e.to_string()));
                        continue;
                    }
                },
            };
            let name = format!("{}.{id}", api.name);
            let method = method.to_ascii_uppercase();
            let fields = with_match(api, &fields, &name, (matched.0, &matched.1), &[method]);
            match route_from(fields) {
                Ok(route) => {
                    let mut contract = None;
                    let requests = validate.as_ref().is_some_and(|v| v.request);
                    let responses = validate
                        .as_ref()
                        .is_some_and(|v| v.response == ResponseCheck::Report);
                    if requests || responses {
                        let compiled = contract::compile(&contract::Operation {
                            doc: &doc,
                            item,
                            op,
                            pointer: &op_pointer,
                            name: &name,
                            base: &api.base_path,
                            template,
                            max_body: validate
                                .as_ref()
                                .and_then(|v| v.max_body)
                                .map_or(MAX_BODY, |b| b.0),
                            requests,
                            responses,
                        });
                        match compiled {
                            Ok(c) => contract = Some(std::sync::Arc::new(c)),
                            Err((pointer, message)) => {
                                faults.push(spec_fault(&pointer, message));
                                continue;
                            }
                        }
                    }
                    out.push(ApiRoute {
                        path,
                        template: format!("{}{template}", api.base_path),
                        route,
                        contract,
                    })
                }
                Err((field, message)) => faults.push(Fault::new(join(&path, &field), message)),
            }
        }
    }
    if out.len() == first && ids.is_empty() {
        faults.push(spec_fault(
            "/paths",
            "the document has no operations".into(),
        ));
    }
    for id in api.operations.keys() {
        if !ids.contains(id) {
            faults.push(Fault::new(
                format!("{at}.operations.{id}"),
                format!("{} has no operation with this operationId", api.spec),
            ));
        }
    }
}

/// Two routes that would answer the same method on the same path for the same hosts: the
/// second one could never be reached. Hand-written exact paths count as templates.
pub fn conflicts(cfg: &Config, generated: &[ApiRoute], faults: &mut Vec<Fault>) {
    struct Entry<'a> {
        path: String,
        name: &'a str,
        shape: String,
        methods: &'a [String],
        hosts: &'a [String],
    }
    let exact = cfg.routes.iter().enumerate().filter_map(|(i, r)| {
        Some(Entry {
            path: cfg.item_path("routes", i),
            name: &r.name,
            shape: shape_of(r.matcher.path_exact.as_deref()?),
            methods: &r.matcher.methods,
            hosts: &r.matcher.hosts,
        })
    });
    let templates = generated.iter().map(|g| Entry {
        path: g.path.clone(),
        name: &g.route.name,
        shape: shape_of(&g.template),
        methods: &g.route.matcher.methods,
        hosts: &g.route.matcher.hosts,
    });
    let mut seen: Vec<Entry> = Vec::new();
    for e in exact.chain(templates) {
        let clash = seen.iter().find(|s| {
            s.shape == e.shape && overlaps(s.methods, e.methods) && overlaps(s.hosts, e.hosts)
        });
        if let Some(other) = clash {
            faults.push(Fault::new(
                e.path.clone(),
                format!(
                    "answers the same method and path as route {:?}: one of them could never be reached",
                    other.name
                ),
            ));
        }
        seen.push(e);
    }
}

/// Empty lists mean "any": they overlap with everything.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|x| b.iter().any(|y| x.eq_ignore_ascii_case(y)))
}

/// A template with every parameter made alike: `/users/{id}` and `/users/{name}` are one.
fn shape_of(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

fn read_document(file: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file:?}: {e}"))?;
    // YAML is a superset of JSON: one parser reads both.
    serde_yaml::from_str(&text).map_err(|e| format!("{file}: not a YAML or JSON document: {e}"))
}

/// The anchored regex for `base` + `template`: literal text escaped, each `{param}` one or
/// more characters other than `/`.
fn template_regex(base: &str, template: &str) -> Result<String, String> {
    template_pattern(base, template, false).map(|(p, _)| p)
}

/// As [`template_regex`]; with `capture`, each parameter is a group, and their names come
/// back in order.
pub(super) fn template_pattern(
    base: &str,
    template: &str,
    capture: bool,
) -> Result<(String, Vec<String>), String> {
    let mut names = Vec::new();
    let mut out = String::from("^");
    out.push_str(&regex::escape(base));
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&regex::escape(&rest[..open]));
        let Some(close) = rest[open..].find('}') else {
            return Err("a { without its }".into());
        };
        let name = &rest[open + 1..open + close];
        if name.is_empty() || name.contains(['{', '/']) {
            return Err(format!("{{{name}}} is not a parameter name"));
        }
        out.push_str(if capture { "([^/]+)" } else { "[^/]+" });
        names.push(name.to_string());
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err("a } without its {".into());
    }
    out.push_str(&regex::escape(rest));
    out.push('$');
    Ok((out, names))
}

/// `get` `/users/{id}/orders` → `get_users_id_orders`.
fn generated_id(method: &str, template: &str) -> String {
    let mut id = method.to_string();
    for part in template.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(part.chars().filter(|c| !matches!(c, '{' | '}')).map(|c| {
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        }));
    }
    id
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
pub(super) fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn merge(into: &mut serde_yaml::Mapping, from: serde_yaml::Mapping) {
    for (k, v) in from {
        into.insert(k, v);
    }
}

fn with_match(
    api: &Api,
    fields: &serde_yaml::Mapping,
    name: &str,
    (kind, path): (&str, &str),
    methods: &[String],
) -> serde_yaml::Mapping {
    let mut m = fields.clone();
    m.insert("name".into(), name.into());
    let mut matcher = serde_yaml::Mapping::new();
    matcher.insert(kind.into(), path.into());
    matcher.insert(
        "methods".into(),
        serde_yaml::Value::Sequence(methods.iter().map(|s| s.as_str().into()).collect()),
    );
    matcher.insert(
        "hosts".into(),
        serde_yaml::Value::Sequence(api.hosts.iter().map(|s| s.as_str().into()).collect()),
    );
    m.insert("match".into(), serde_yaml::Value::Mapping(matcher));
    m
}

/// The route, or the YAML path (below the route) and message of why it is not one.
fn route_from(fields: serde_yaml::Mapping) -> Result<Route, (String, String)> {
    serde_path_to_error::deserialize(serde_yaml::Value::Mapping(fields)).map_err(
        |e: serde_path_to_error::Error<serde_yaml::Error>| {
            (e.path().to_string(), e.into_inner().to_string())
        },
    )
}

fn join(at: &str, field: &str) -> String {
    if field.is_empty() || field == "." {
        at.to_string()
    } else {
        format!("{at}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_become_anchored_regexes() {
        assert_eq!(
            template_regex("/v1", "/users/{id}").as_deref(),
            Ok(r"^/v1/users/[^/]+$")
        );
        assert_eq!(
            template_regex("", "/files/{name}.json").as_deref(),
            Ok(r"^/files/[^/]+\.json$")
        );
        assert!(template_regex("", "/a/{b").is_err());
        assert!(template_regex("", "/a/b}").is_err());
        assert!(template_regex("", "/a/{}").is_err());
    }

    #[test]
    fn parameters_do_not_change_a_shape() {
        assert_eq!(shape_of("/users/{id}"), shape_of("/users/{name}"));
        assert_ne!(shape_of("/users/{id}"), shape_of("/users/{id}/orders"));
    }

    #[test]
    fn operations_without_an_id_get_one_from_method_and_path() {
        assert_eq!(
            generated_id("get", "/users/{id}/orders"),
            "get_users_id_orders"
        );
    }
}
