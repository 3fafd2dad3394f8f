//! Header operations (remove, rename, set, add — in that order), compiled at load.

use super::template::{parse_map, Template, Vars};
use crate::config::NameOps;
use http::{HeaderName, HeaderValue};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

/// Request and response headers alike, through Pingora's own methods so its header-case
/// bookkeeping stays right.
pub trait Headers {
    fn map(&self) -> &http::HeaderMap;
    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &HeaderName);
}

/// `RequestHeader` and `ResponseHeader` offer the same methods under the same names.
macro_rules! pingora_headers {
    ($t:ty) => {
        impl Headers for $t {
            fn map(&self) -> &http::HeaderMap {
                &self.headers
            }
            fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.append_header(name, value).map(|_| ())
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}

pingora_headers!(RequestHeader);
pingora_headers!(ResponseHeader);

/// A value known at load (rendered once) or filled in per request.
enum Value {
    Fixed(HeaderValue),
    Template(Template),
}

#[derive(Default)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, Value)>,
    add: Vec<(HeaderName, Value)>,
}

fn name(path: &str, n: &str) -> Result<HeaderName, (String, String)> {
    HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
        (
            path.to_string(),
            format!("{n:?} is not a valid header name"),
        )
    })
}

impl HeaderOps {
    /// Faults come back as (path below the ops, message).
    pub fn compile(spec: &NameOps) -> Result<Self, (String, String)> {
        let values = |field: &str, m| {
            parse_map(field, m)?
                .into_iter()
                .map(|(k, t)| {
                    let path = format!("{field}.{k}");
                    let value =
                        match t.as_static() {
                            Some(s) => Value::Fixed(HeaderValue::from_str(s).map_err(|_| {
                                (path.clone(), format!("{s:?} is not a header value"))
                            })?),
                            None => Value::Template(t),
                        };
                    Ok((name(&path, &k)?, value))
                })
                .collect::<Result<Vec<_>, (String, String)>>()
        };
        Ok(HeaderOps {
            remove: spec
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| name(&format!("remove[{i}]"), n))
                .collect::<Result<_, _>>()?,
            rename: spec
                .rename
                .iter()
                .map(|(a, b)| {
                    Ok((
                        name(&format!("rename.{a}"), a)?,
                        name(&format!("rename.{a}"), b)?,
                    ))
                })
                .collect::<Result<_, (String, String)>>()?,
            set: values("set", &spec.set)?,
            add: values("add", &spec.add)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    pub fn apply(&self, h: &mut impl Headers, v: &Vars) -> Result<()> {
        for n in &self.remove {
            h.remove(n);
        }
        for (from, to) in &self.rename {
            let values: Vec<HeaderValue> = h.map().get_all(from).iter().cloned().collect();
            if values.is_empty() {
                continue;
            }
            h.remove(from);
            h.remove(to);
            for value in values {
                h.append(to.clone(), value)?;
            }
        }
        for (n, t) in &self.set {
            match render(t, v) {
                Some(value) => h.insert(n.clone(), value)?,
                None => h.remove(n),
            }
        }
        for (n, t) in &self.add {
            if let Some(value) = render(t, v) {
                h.append(n.clone(), value)?;
            }
        }
        Ok(())
    }
}

/// The value, or `None` when variables left it empty or unusable as a header value.
fn render(value: &Value, v: &Vars) -> Option<HeaderValue> {
    let t = match value {
        Value::Fixed(h) => return Some(h.clone()),
        Value::Template(t) => t,
    };
    let s = t.render(v);
    if s.is_empty() {
        return None;
    }
    HeaderValue::from_str(&s).ok()
}
