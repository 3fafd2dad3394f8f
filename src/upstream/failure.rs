//! What went wrong with one attempt at an upstream, and the configured sets of failures
//! that count for outlier detection, the circuit breaker and retries.

use crate::config::{self, FailureName, Fault};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: the request never left.
    Connect,
    /// The upstream did not answer (or take the request) in time.
    Timeout,
    /// The upstream closed or broke the connection mid-exchange.
    Reset,
    /// The upstream answered with this 5xx status.
    Status(u16),
}

/// A set of failures, compiled from an `on:` list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureSet {
    connect: bool,
    timeout: bool,
    reset: bool,
    /// Bit `n` stands for status `500 + n`.
    statuses: u128,
}

impl FailureSet {
    pub const CONNECT_ONLY: FailureSet = FailureSet {
        connect: true,
        timeout: false,
        reset: false,
        statuses: 0,
    };

    /// What an upstream's own `retries` cover: refused connects, and connections dropped
    /// before an answer (for idempotent requests only, as every non-connect failure).
    pub const CONNECT_AND_RESET: FailureSet = FailureSet {
        connect: true,
        timeout: false,
        reset: true,
        statuses: 0,
    };

    pub fn compile(names: &[FailureName]) -> Result<FailureSet, String> {
        let mut set = FailureSet::default();
        for name in names {
            match name {
                FailureName::Status(code @ 500..=599) => set.statuses |= 1 << (code - 500),
                FailureName::Status(code) => {
                    return Err(format!("{code} is not a 5xx status"));
                }
                FailureName::Name(n) => match n.as_str() {
                    "connect" => set.connect = true,
                    "timeout" => set.timeout = true,
                    "reset" => set.reset = true,
                    "5xx" => set.statuses = u128::MAX >> 28,
                    other => {
                        return Err(format!(
                            "{other:?} is not a failure: use connect, timeout, reset, 5xx or a 5xx status"
                        ))
                    }
                },
            }
        }
        Ok(set)
    }

    pub fn contains(&self, f: Failure) -> bool {
        match f {
            Failure::Connect => self.connect,
            Failure::Timeout => self.timeout,
            Failure::Reset => self.reset,
            Failure::Status(s @ 500..=599) => self.statuses & (1 << (s - 500)) != 0,
            Failure::Status(_) => false,
        }
    }

    /// Whether some 5xx status is in the set (responses need looking at).
    pub fn any_status(&self) -> bool {
        self.statuses != 0
    }
}

impl FailureSet {
    /// An `on:` list; a bad name is reported at `path`.
    pub fn from_config(
        path: String,
        names: &[config::FailureName],
        faults: &mut Vec<Fault>,
    ) -> FailureSet {
        Self::compile(names).unwrap_or_else(|e| {
            faults.push(Fault::new(path, e));
            FailureSet::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<FailureName> {
        list.iter()
            .map(|n| match n.parse() {
                Ok(c) => FailureName::Status(c),
                Err(_) => FailureName::Name(n.to_string()),
            })
            .collect()
    }

    #[test]
    fn statuses_and_kinds() {
        let s = FailureSet::compile(&names(&["timeout", "503"])).unwrap();
        assert!(s.contains(Failure::Timeout) && s.contains(Failure::Status(503)));
        assert!(!s.contains(Failure::Connect) && !s.contains(Failure::Status(500)));
        let all = FailureSet::compile(&names(&["5xx"])).unwrap();
        assert!(all.contains(Failure::Status(500)) && all.contains(Failure::Status(599)));
        assert!(!all.contains(Failure::Status(404)));
        assert!(FailureSet::compile(&names(&["404"])).is_err());
        assert!(FailureSet::compile(&names(&["refused"])).is_err());
    }
}
