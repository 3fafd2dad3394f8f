//! How the path sent upstream is derived from the client's (`rewrite`, `strip_prefix`).

use regex::Regex;
use std::borrow::Cow;

/// How the path sent upstream is derived from the client's.
#[derive(Debug)]
pub enum Rewrite {
    Keep,
    /// Replace the matched prefix with `with` (empty for `strip_prefix`).
    Prefix {
        prefix: String,
        with: String,
    },
    /// Replace the whole (exactly matched) path.
    Exact(String),
    /// Regex replacement with `$1`/`$name` captures of the route's path regex.
    Regex {
        regex: Regex,
        template: String,
    },
}

impl Rewrite {
    /// The new path, or `None` when it stays as it is.
    pub fn apply<'a>(&'a self, path: &'a str) -> Option<Cow<'a, str>> {
        let out: Cow<str> = match self {
            Rewrite::Keep => return None,
            Rewrite::Prefix { prefix, with } => {
                let rest = path.strip_prefix(prefix.as_str())?;
                Cow::Owned(format!("{with}{rest}"))
            }
            Rewrite::Exact(to) => Cow::Borrowed(to.as_str()),
            Rewrite::Regex { regex, template } => regex.replace(path, template.as_str()),
        };
        Some(match out {
            o if o.is_empty() => Cow::Borrowed("/"),
            o if !o.starts_with('/') => Cow::Owned(format!("/{o}")),
            o => o,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites() {
        let strip = Rewrite::Prefix {
            prefix: "/api".into(),
            with: String::new(),
        };
        assert_eq!(strip.apply("/api/users").as_deref(), Some("/users"));
        assert_eq!(strip.apply("/api").as_deref(), Some("/"));
        let swap = Rewrite::Prefix {
            prefix: "/v1".into(),
            with: "/v2".into(),
        };
        assert_eq!(swap.apply("/v1/x").as_deref(), Some("/v2/x"));
        let re = Rewrite::Regex {
            regex: Regex::new("^/u/(?P<id>\\d+)$").unwrap(),
            template: "/users/$id".into(),
        };
        assert_eq!(re.apply("/u/42").as_deref(), Some("/users/42"));
    }
}
