//! Query-string operations, on the raw (percent-encoded) string.

use super::template::{parse_map, Template, Vars};
use crate::config::NameOps;

#[derive(Default)]
pub struct QueryOps {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    set: Vec<(String, Template)>,
    add: Vec<(String, Template)>,
}

fn encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl QueryOps {
    pub fn compile(spec: &NameOps) -> Result<Self, (String, String)> {
        Ok(QueryOps {
            remove: spec.remove.clone(),
            rename: spec.rename.clone().into_iter().collect(),
            set: parse_map("set", &spec.set)?,
            add: parse_map("add", &spec.add)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// The new query string (`None`: no query at all).
    pub fn apply(&self, query: Option<&str>, v: &Vars) -> Option<String> {
        let mut pairs: Vec<(String, Option<String>)> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, val)) => (k.to_string(), Some(val.to_string())),
                None => (p.to_string(), None),
            })
            .collect();
        pairs.retain(|(k, _)| !self.remove.contains(k));
        for (from, to) in &self.rename {
            for (k, _) in pairs.iter_mut().filter(|(k, _)| k == from) {
                *k = to.clone();
            }
        }
        let encoded = |t: &Template| {
            let mut out = String::new();
            encode(&mut out, &t.render(v));
            out
        };
        for (k, t) in &self.set {
            pairs.retain(|(name, _)| name != k);
            pairs.push((k.clone(), Some(encoded(t))));
        }
        for (k, t) in &self.add {
            pairs.push((k.clone(), Some(encoded(t))));
        }
        if pairs.is_empty() {
            return None;
        }
        let mut out = String::new();
        for (i, (k, val)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(k);
            if let Some(val) = val {
                out.push('=');
                out.push_str(val);
            }
        }
        Some(out)
    }
}
