//! The config's JSON Schema: the committed file is what the binary generates, every shipped
//! config conforms to it, and it refuses what the loader refuses where a schema can say so.

mod common;

use common::*;
use std::process::Command;

fn committed() -> serde_json::Value {
    let text = std::fs::read_to_string("conf/portico.schema.json").expect("read the schema");
    serde_json::from_str(&text).expect("the committed schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&committed()).expect("the committed schema is a valid JSON Schema")
}

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).expect("YAML")
}

/// Every violation, as `pointer: message`.
fn violations(text: &str) -> Vec<String> {
    let instance = yaml(text);
    validator()
        .iter_errors(&instance)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

#[test]
fn the_committed_schema_is_what_portico_schema_prints() {
    let out = Command::new(portico_bin())
        .arg("schema")
        .output()
        .expect("run portico schema");
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        printed == committed(),
        "conf/portico.schema.json is stale: regenerate it with \
         `portico schema > conf/portico.schema.json`"
    );
}

#[test]
fn every_shipped_config_conforms_and_names_the_schema() {
    for file in ["conf/portico.yaml", "conf/demo.yaml"] {
        let text = std::fs::read_to_string(file).expect("read config");
        assert_eq!(violations(&text), Vec::<String>::new(), "{file}");
        assert!(
            text.starts_with("# yaml-language-server: $schema=portico.schema.json\n"),
            "{file} does not point editors at the schema"
        );
    }
}

/// What the schema refuses, the loader refuses too: a typo, a duration without a unit, a
/// size with an unknown unit, a token source of two kinds, an unknown top-level section.
#[test]
fn the_schema_refuses_what_the_loader_refuses() {
    let base = "listeners: [{address: 127.0.0.1:8080}]\n\
                upstreams: [{name: a, targets: [{address: 127.0.0.1:9000}]}]\n";
    let route = "routes: [{name: r, upstream: a}]\n";
    let good = format!("{base}{route}");
    assert_eq!(violations(&good), Vec::<String>::new());
    assert!(check_config(&good).0);
    let jwt = |sources: &str| {
        format!(
            "auth: {{jwt: [{{name: j, algorithms: [HS256], keys: {{secret: {secret}}}, \
             token_from: [{sources}]}}]}}\n",
            secret = "k".repeat(40)
        )
    };
    assert_eq!(
        violations(&format!("{good}{}", jwt("bearer, {header: x-token}"))),
        Vec::<String>::new()
    );
    assert!(check_config(&format!("{good}{}", jwt("bearer, {header: x-token}"))).0);
    let bad = [
        (
            format!("{base}routes: [{{name: r, upstream: a, uptream: b}}]\n"),
            "/routes/0",
        ),
        (
            format!("{good}server: {{keepalive_timeout: 60}}\n"),
            "/server/keepalive_timeout",
        ),
        (
            format!("{good}server: {{read_buffer: 64KB2}}\n"),
            "/server/read_buffer",
        ),
        (
            format!("{good}{}", jwt("{header: a, query: b}")),
            "/auth/jwt/0/token_from/0",
        ),
        (format!("{good}routez: []\n"), ""),
    ];
    for (text, pointer) in bad {
        let found = violations(&text);
        assert!(
            found.iter().any(|v| v.starts_with(&format!("{pointer}: "))),
            "{text}: expected a violation at {pointer:?}, got {found:?}"
        );
        assert!(!check_config(&text).0, "the loader accepted {text}");
    }
}

/// The file-level object is written by hand around the loader's per-section parsing: each of
/// its properties must be a section the loader knows.
#[test]
fn every_top_level_property_is_a_section_the_loader_reads() {
    let schema = committed();
    let properties = schema["properties"].as_object().expect("properties");
    assert!(properties.len() >= 12, "{properties:?}");
    for name in properties.keys() {
        let parsed = portico::config::parse("t.yaml", &format!("{name}: null\n"));
        let faults = match parsed {
            Ok(p) => p.faults,
            Err(e) => e.faults,
        };
        assert!(
            faults.iter().all(|f| !f.message.contains("unknown field")),
            "{name}: {faults:?}"
        );
    }
}
