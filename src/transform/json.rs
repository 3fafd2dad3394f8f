//! Edits of JSON bodies by JSON pointer (RFC 6901): remove, rename, set, add — in that
//! order — compiled at load.

use crate::config::JsonOps as JsonSpec;
use serde_json::Value;

pub struct JsonOps {
    remove: Vec<Vec<String>>,
    rename: Vec<(Vec<String>, Vec<String>)>,
    set: Vec<(Vec<String>, Value)>,
    add: Vec<(Vec<String>, Value)>,
}

/// The reference tokens of a pointer; the whole document (`""`) cannot be edited.
fn tokens(p: &str) -> Result<Vec<String>, String> {
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| format!("{p:?} is not a JSON pointer to a field (start with /)"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn value(v: &serde_yaml::Value) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("not a JSON value: {e}"))
}

/// The parent container of the pointer's target and the last token.
fn parent<'a>(
    root: &'a mut Value,
    t: &'a [String],
    create: bool,
) -> Option<(&'a mut Value, &'a str)> {
    let (last, path) = t.split_last()?;
    let mut cur = root;
    for tok in path {
        cur = match cur {
            Value::Object(m) => {
                if create && !m.contains_key(tok) {
                    m.insert(tok.clone(), Value::Object(Default::default()));
                }
                m.get_mut(tok)?
            }
            Value::Array(a) => a.get_mut(tok.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some((cur, last.as_str()))
}

fn take(root: &mut Value, t: &[String]) -> Option<Value> {
    match parent(root, t, false)? {
        (Value::Object(m), k) => m.remove(k),
        (Value::Array(a), k) => {
            let i = k.parse::<usize>().ok().filter(|i| *i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

fn exists(root: &Value, t: &[String]) -> bool {
    let mut cur = root;
    for tok in t {
        cur = match cur {
            Value::Object(m) => match m.get(tok) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(a) => match tok.parse::<usize>().ok().and_then(|i| a.get(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    true
}

/// Put `v` at the pointer, creating missing objects on the way; `-` appends to an array.
fn put(root: &mut Value, t: &[String], v: Value) {
    match parent(root, t, true) {
        Some((Value::Object(m), k)) => {
            m.insert(k.to_string(), v);
        }
        Some((Value::Array(a), "-")) => a.push(v),
        Some((Value::Array(a), k)) => {
            if let Some(slot) = k.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                *slot = v;
            }
        }
        _ => {}
    }
}

impl JsonOps {
    pub fn compile(spec: &JsonSpec) -> Result<Option<Self>, (String, String)> {
        let ops = JsonOps {
            remove: spec
                .remove
                .iter()
                .enumerate()
                .map(|(i, p)| tokens(p).map_err(|e| (format!("remove[{i}]"), e)))
                .collect::<Result<_, _>>()?,
            rename: spec
                .rename
                .iter()
                .map(|(a, b)| {
                    let f = |e| (format!("rename.{a}"), e);
                    Ok((tokens(a).map_err(f)?, tokens(b).map_err(f)?))
                })
                .collect::<Result<_, (String, String)>>()?,
            set: spec
                .set
                .iter()
                .map(|(p, v)| {
                    let f = |e| (format!("set.{p}"), e);
                    Ok((tokens(p).map_err(f)?, value(v).map_err(f)?))
                })
                .collect::<Result<_, (String, String)>>()?,
            add: spec
                .add
                .iter()
                .map(|(p, v)| {
                    let f = |e| (format!("add.{p}"), e);
                    Ok((tokens(p).map_err(f)?, value(v).map_err(f)?))
                })
                .collect::<Result<_, (String, String)>>()?,
        };
        let empty = ops.remove.is_empty()
            && ops.rename.is_empty()
            && ops.set.is_empty()
            && ops.add.is_empty();
        Ok((!empty).then_some(ops))
    }

    pub fn apply(&self, doc: &mut Value) {
        for t in &self.remove {
            take(doc, t);
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(doc, from) {
                put(doc, to, v);
            }
        }
        for (t, v) in &self.set {
            put(doc, t, v.clone());
        }
        for (t, v) in &self.add {
            if !exists(doc, t) {
                put(doc, t, v.clone());
            }
        }
    }

    /// The edited body, or `None` when it is not JSON (then it is passed on as it came).
    pub fn edit(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut doc: Value = serde_json::from_slice(body).ok()?;
        self.apply(&mut doc);
        serde_json::to_vec(&doc).ok()
    }
}

/// Take one chunk of a body being edited into `buf`; at the end put the edited body (or the
/// original, when it is not JSON) in its place. `false` when the body outgrows `max`. A
/// non-final chunk is replaced by empty bytes: `None` would tell Pingora the body ended.
pub fn gather(
    buf: &mut Vec<u8>,
    body: &mut Option<bytes::Bytes>,
    end: bool,
    max: usize,
    ops: Option<&JsonOps>,
) -> bool {
    if let Some(b) = body.as_mut() {
        buf.extend_from_slice(b);
        *b = bytes::Bytes::new();
    }
    if buf.len() > max {
        return false;
    }
    if end {
        let gathered = std::mem::take(buf);
        let out = ops.and_then(|o| o.edit(&gathered)).unwrap_or(gathered);
        *body = Some(out.into());
    }
    true
}

/// Whether a Content-Type names JSON (`application/json`, `application/*+json`).
pub fn is_json(content_type: Option<&http::HeaderValue>) -> bool {
    crate::request_parts::media_type(content_type)
        .is_some_and(|m| crate::request_parts::is_json_media(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_by_pointer() {
        let spec: JsonSpec = serde_yaml::from_str(
            "remove: [/secret, /items/0]\nrename: {/name: /user/full_name}\nset: {/meta/source: gateway, /items/-: 9}\nadd: {/version: 2, /user/full_name: ignored}",
        )
        .unwrap();
        let ops = JsonOps::compile(&spec).unwrap().unwrap();
        let out = ops
            .edit(br#"{"name":"Ada","secret":"x","items":[1,2],"a/b":1}"#)
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"user": {"full_name": "Ada"}, "items": [2, 9], "a/b": 1,
                "meta": {"source": "gateway"}, "version": 2})
        );
        assert!(ops.edit(b"not json").is_none());
        let bad: JsonSpec = serde_yaml::from_str("remove: [nope]").unwrap();
        assert!(JsonOps::compile(&bad).is_err());
    }
}
