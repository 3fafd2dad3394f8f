//! Maps YAML paths such as `routes[2].upstream` to the line they stand on, so that every
//! fault, including those found long after serde is done, can name its line.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct Positions {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Indexer {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Indexer {
    /// Path of the node that starts now, or `None` when the node is a mapping key.
    fn enter_node(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
        }
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => match self.enter_node() {
                Some(path) => {
                    self.lines.entry(path).or_insert(mark.line());
                }
                None => {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        self.lines.insert(join(path, &value), mark.line());
                        *key = Some(value);
                    }
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A collection used as a mapping key has no path we could name.
                let path = self.enter_node().unwrap_or_else(|| "?".to_string());
                self.lines.entry(path.clone()).or_insert(mark.line());
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.enter_node();
            }
            _ => {}
        }
    }
}

impl Positions {
    /// Index `src`; a document that does not parse yields an empty index (serde reports
    /// the syntax error itself).
    pub fn index(src: &str) -> Self {
        let mut indexer = Indexer::default();
        let _ = Parser::new_from_str(src).load(&mut indexer, false);
        Positions {
            lines: indexer.lines,
        }
    }

    /// The line of `path`, or of its closest ancestor that is in the file.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The line of a key named `key` somewhere below `path` (for serde's "unknown field").
    pub fn line_of_key_below(&self, path: &str, key: &str) -> Option<usize> {
        let suffix = format!(".{key}");
        self.lines
            .iter()
            .filter(|(p, _)| {
                p.ends_with(&suffix) && (path.is_empty() || p.starts_with(path))
                    || path.is_empty() && p.as_str() == key
            })
            .map(|(_, l)| *l)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_nested_paths() {
        let src = "server:\n  threads: 2\nroutes:\n  - name: a\n    match:\n      hosts: [x, y]\n  - name: b\n    upstream: u\n";
        let p = Positions::index(src);
        assert_eq!(p.line_of("server.threads"), Some(2));
        assert_eq!(p.line_of("routes[0].name"), Some(4));
        assert_eq!(p.line_of("routes[0].match.hosts[1]"), Some(6));
        assert_eq!(p.line_of("routes[1].upstream"), Some(8));
        assert_eq!(p.line_of("routes[1].nothing.here"), Some(7));
        assert_eq!(p.line_of_key_below("routes[1]", "upstream"), Some(8));
    }
}
