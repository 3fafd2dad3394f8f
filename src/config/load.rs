//! Turns YAML text into a [`Config`], collecting every fault it can find in one pass.
//!
//! Each top-level section and each list item is deserialized on its own, so a typo in one
//! route does not hide a typo in the next one.

use super::positions::Positions;
use super::schema::*;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::fmt;

/// One thing wrong with a config, at a YAML path such as `routes[2].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl Fault {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Fault {
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }
}

/// All the faults of one config file; `Display` prints one `FILE:LINE: path: message` each.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub faults: Vec<Fault>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, fault) in self.faults.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(line) = fault.line {
                write!(f, ":{line}")?;
            }
            if fault.path.is_empty() {
                write!(f, ": {}", fault.message)?;
            } else {
                write!(f, ": {}: {}", fault.path, fault.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// Give each fault the line of its path in `positions`.
    pub fn locate(mut self, positions: &Positions) -> Self {
        for fault in &mut self.faults {
            if fault.line.is_none() {
                fault.line = positions.line_of(&fault.path);
            }
        }
        self
    }
}

struct Collector<'a> {
    positions: &'a Positions,
    faults: Vec<Fault>,
}

impl Collector<'_> {
    /// Deserialize `value` as a `T` found at `path`; on failure record a fault at the deepest
    /// path serde reached and return `None`.
    fn take<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match inner.as_str() {
                    "." | "" => path.to_string(),
                    _ if path.is_empty() => inner.clone(),
                    _ if inner.starts_with('[') => format!("{path}{inner}"),
                    _ => format!("{path}.{inner}"),
                };
                let message = e.into_inner().to_string();
                let line = unknown_field_name(&message)
                    .and_then(|key| self.positions.line_of_key_below(&full, key))
                    .or_else(|| self.positions.line_of(&full));
                self.faults.push(Fault {
                    path: full,
                    line,
                    message,
                });
                None
            }
        }
    }

    /// A list section: each item on its own. Returns the items that parsed and their index
    /// in the file.
    fn list<T: DeserializeOwned>(&mut self, section: &str, value: Value) -> (Vec<T>, Vec<usize>) {
        match value {
            Value::Sequence(items) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| Some((self.take(&format!("{section}[{i}]"), item)?, i)))
                .unzip(),
            Value::Null => Default::default(),
            _ => {
                self.faults.push(Fault::new(
                    section,
                    "expected a list (lines starting with `- `)",
                ));
                Default::default()
            }
        }
    }
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Names of list items that failed to parse, so later checks do not also report them as
/// missing.
#[derive(Debug, Default)]
pub struct Unparsed {
    pub upstreams: Vec<String>,
    pub jwt_providers: Vec<String>,
}

fn item_names(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| i.get("name").and_then(Value::as_str).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// A config as far as it parsed: sections and items with faults are left out and their
/// faults listed, so that later checks can still run on the rest.
#[derive(Debug)]
pub struct Parsed {
    pub config: Config,
    pub positions: Positions,
    pub unparsed: Unparsed,
    pub faults: Vec<Fault>,
    /// SHA-256 of the file's text, hex: which config is running, as `/status` reports it.
    pub sha256: String,
}

/// Parse config text. Only a document that is not YAML at all, or not a mapping, is an
/// error here; every other fault is listed in [`Parsed::faults`].
pub fn parse(file: &str, text: &str) -> Result<Parsed, ConfigError> {
    let positions = Positions::index(text);
    let fail = |faults: Vec<Fault>| ConfigError {
        file: file.to_string(),
        faults,
    };
    let root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let mut fault = Fault::new("", format!("not valid YAML: {e}"));
            fault.line = e.location().map(|l| l.line());
            return Err(fail(vec![fault]));
        }
    };
    let map = match root {
        Value::Mapping(m) => m,
        Value::Null => return Err(fail(vec![Fault::new("", "the file is empty")])),
        _ => {
            return Err(fail(vec![Fault::new(
                "",
                "expected a mapping with server, listeners, upstreams and routes",
            )]))
        }
    };

    let mut c = Collector {
        positions: &positions,
        faults: Vec::new(),
    };
    let mut config = Config::default();
    let mut unparsed = Unparsed::default();
    for (key, value) in map {
        let Some(key) = key.as_str().map(str::to_string) else {
            c.faults
                .push(Fault::new("", "top-level keys must be plain names"));
            continue;
        };
        match key.as_str() {
            "server" => {
                if let Some(s) = c.take("server", value) {
                    config.server = s;
                }
            }
            "listeners" => {
                (config.listeners, config.file_index.listeners) = c.list("listeners", value)
            }
            "trusted_proxies" => {
                if let Some(t) = c.take("trusted_proxies", value) {
                    config.trusted_proxies = t;
                }
            }
            "upstreams" => {
                let names = item_names(&value);
                (config.upstreams, config.file_index.upstreams) = c.list("upstreams", value);
                unparsed.upstreams = names
                    .into_iter()
                    .filter(|n| !config.upstreams.iter().any(|u| &u.name == n))
                    .collect();
            }
            "routes" => (config.routes, config.file_index.routes) = c.list("routes", value),
            "apis" => (config.apis, config.file_index.apis) = c.list("apis", value),
            "redis" => config.redis = c.take("redis", value),
            "cache" => {
                if let Some(cache) = c.take("cache", value) {
                    config.cache = cache;
                }
            }
            "admin" => config.admin = c.take("admin", value),
            "access_log" => config.access_log = c.take("access_log", value),
            "tracing" => config.tracing = c.take("tracing", value),
            "default_rate_limits" => {
                if let Some(l) = c.take("default_rate_limits", value) {
                    config.default_rate_limits = l;
                }
            }
            "consumers" => {
                (config.consumers, config.file_index.consumers) = c.list("consumers", value)
            }
            "auth" => {
                let Value::Mapping(auth) = value else {
                    if !value.is_null() {
                        c.faults.push(Fault::new(
                            "auth",
                            "expected a mapping with jwt, introspection, external and api_keys",
                        ));
                    }
                    continue;
                };
                for (k, v) in auth {
                    match k.as_str() {
                        Some("jwt") => {
                            let names = item_names(&v);
                            (config.auth.jwt, config.file_index.jwt) = c.list("auth.jwt", v);
                            unparsed.jwt_providers.extend(
                                names
                                    .into_iter()
                                    .filter(|n| !config.auth.jwt.iter().any(|p| &p.name == n)),
                            );
                        }
                        Some("introspection") => {
                            let names = item_names(&v);
                            (config.auth.introspection, config.file_index.introspection) =
                                c.list("auth.introspection", v);
                            unparsed.jwt_providers.extend(names.into_iter().filter(|n| {
                                !config.auth.introspection.iter().any(|p| &p.name == n)
                            }));
                        }
                        Some("external") => {
                            let names = item_names(&v);
                            (config.auth.external, config.file_index.external) =
                                c.list("auth.external", v);
                            unparsed.jwt_providers.extend(
                                names
                                    .into_iter()
                                    .filter(|n| !config.auth.external.iter().any(|p| &p.name == n)),
                            );
                        }
                        Some("api_keys") => {
                            if let Some(a) = c.take("auth.api_keys", v) {
                                config.auth.api_keys = a;
                            }
                        }
                        other => c.faults.push(Fault::new(
                            format!("auth.{}", other.unwrap_or("?")),
                            "unknown field, expected one of `jwt`, `introspection`, `external`, \
                             `api_keys`",
                        )),
                    }
                }
            }
            other => c.faults.push(Fault {
                path: other.to_string(),
                line: positions.line_of(other),
                message: format!(
                    "unknown field `{other}`, expected one of `server`, `listeners`, \
                     `trusted_proxies`, `upstreams`, `routes`, `consumers`, `auth`, \
                     `default_rate_limits`, `redis`, `cache`, `admin`, `access_log`, `tracing`, `apis`"
                ),
            }),
        }
    }
    let faults = c.faults;
    Ok(Parsed {
        config,
        positions,
        unparsed,
        faults,
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_several_faults_with_lines() {
        let text = "\
listeners:
  - address: 127.0.0.1:8080
upstreams:
  - name: a
    targets: [{address: 127.0.0.1:1}]
    timeouts:
      conect: 1s
routes:
  - name: r
    upstream: a
    priorty: 3
";
        let parsed = parse("f.yaml", text).unwrap();
        let out = ConfigError {
            file: "f.yaml".into(),
            faults: parsed.faults,
        }
        .to_string();
        assert!(out.contains("f.yaml:7: upstreams[0].timeouts"), "{out}");
        assert!(out.contains("conect"), "{out}");
        assert!(out.contains("f.yaml:11: routes[0]"), "{out}");
        assert!(out.contains("priorty"), "{out}");
    }

    #[test]
    fn bad_duration_points_at_its_line() {
        let text = "upstreams:\n  - name: a\n    targets: []\n    health_check:\n      type: tcp\n      interval: 5 minutes\n";
        let faults = parse("f.yaml", text).unwrap().faults;
        assert_eq!(faults.len(), 1, "{faults:?}");
        assert_eq!(faults[0].path, "upstreams[0].health_check.interval");
        assert_eq!(faults[0].line, Some(6));
    }
}
