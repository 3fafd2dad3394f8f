//! The module graph runs one way, from `main` down to `config`: no top-level module of the
//! library reaches, through its imports, back to itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it names (`crate::NAME`).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("a component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            // The binary and the crate root stand above every module.
            if module == "main" || module == "lib" || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source is readable");
            let uses = graph.entry(module.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let name: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A path from `from` back to `to` through the graph, if there is one.
fn path_between(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_string()]];
    while let Some(path) = stack.pop() {
        let last = path.last().expect("paths are not empty").clone();
        if last == to {
            return Some(path);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for next in graph.get(&last).into_iter().flatten() {
            let mut longer = path.clone();
            longer.push(next.clone());
            stack.push(longer);
        }
    }
    None
}

#[test]
fn no_module_imports_its_way_back_to_itself() {
    let graph = module_graph();
    assert!(graph.len() > 20, "found only {} modules", graph.len());
    let mut cycles = Vec::new();
    for (module, uses) in &graph {
        for used in uses {
            if let Some(back) = path_between(&graph, used, module) {
                cycles.push(format!("{module} -> {}", back.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_graph_sees_the_imports_it_checks() {
    let graph = module_graph();
    // Known edges, so a parser that saw nothing cannot pass the test above.
    assert!(graph["proxy"].contains("runtime"), "{:?}", graph["proxy"]);
    assert!(graph["runtime"].contains("route"), "{:?}", graph["runtime"]);
    assert!(graph["route"].contains("policy"), "{:?}", graph["route"]);
}
