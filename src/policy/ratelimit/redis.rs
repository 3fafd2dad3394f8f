//! Cluster-wide rate limits: the same GCRA as `local.rs`, kept in Redis so that every gateway
//! sharing the Redis enforces one limit.
//!
//! One Lua script decides all cluster limits of a request atomically, in one round trip:
//! it reads each key's TAT, admits the request only if every enforcing limit admits it, then
//! stores the new TATs with an expiry at the moment the bucket is full again. Time comes from
//! Redis (`TIME`), so gateway clocks need not agree.
//!
//! When Redis fails or answers later than `timeout`, the configured policy applies:
//! `fail_open` admits the request (cluster limits are skipped), `fail_closed` answers 503.
//! Either way the failure is logged and counted. How Redis is reached (one server, a
//! Cluster, Sentinel) is `redis_link`'s business.

use super::local::Verdict;
use crate::config::{Fault, RedisMode};
use crate::redis_link::{Op, RedisLink};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats = {}
local admit = true
for i = 1, n do
  local tolerance = tonumber(ARGV[3 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  if ARGV[3 * i] == '1' and tat - now > tolerance then admit = false end
end
local out = {}
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local ahead = tats[i] - now
  if admit and ahead <= tolerance then
    local new_tat = tats[i] + interval
    redis.call('SET', KEYS[i], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
    out[i] = {1, new_tat - now}
  else
    out[i] = {ahead <= tolerance and 1 or 0, ahead}
  end
end
return out
"#;

/// One cluster limit of a request, in microseconds.
pub struct Check {
    pub key: String,
    pub interval_us: u64,
    pub tolerance_us: u64,
    pub enforce: bool,
}

pub struct RedisLimiter {
    pub link: RedisLink,
    script: redis::Script,
    pub timeout: Duration,
    pub fail_open: bool,
    pub key_prefix: String,
    /// The channel cache purges are published on for the other gateways.
    pub purge_channel: String,
    /// Decisions that Redis could not make (errors and timeouts).
    pub failures: AtomicU64,
    /// What the connection was made from, to keep it over a reload that changes neither.
    source: RedisSource,
}

/// The `redis` section and the digest of its password file: a changed password counts as a
/// change of the section.
#[derive(PartialEq)]
pub struct RedisSource {
    section: crate::config::RedisSection,
    password_digest: Option<[u8; 32]>,
}

impl RedisLimiter {
    /// The `redis` section, or the running limiter when it is unchanged.
    pub fn from_config(
        section: Option<&crate::config::RedisSection>,
        running: Option<&Arc<RedisLimiter>>,
        faults: &mut Vec<Fault>,
    ) -> Option<Arc<RedisLimiter>> {
        use sha2::Digest;
        let r = section?;
        let password = r.password_file.as_deref().and_then(|f| {
            crate::config::read_secret(f)
                .map_err(|e| faults.push(Fault::new("redis.password_file", e)))
                .ok()
        });
        let source = RedisSource {
            section: r.clone(),
            password_digest: password
                .as_ref()
                .map(|p| sha2::Sha256::digest(p.as_bytes()).into()),
        };
        if let Some(running) = running.filter(|l| l.source == source) {
            return Some(running.clone());
        }
        if r.timeout.0.is_zero() {
            faults.push(Fault::new("redis.timeout", "must be longer than 0s"));
        }
        if r.mode == RedisMode::Cluster && r.key_prefix.contains(['{', '}']) {
            // The hash tag that keeps one request's keys in one slot must be the key's first.
            faults.push(Fault::new(
                "redis.key_prefix",
                "cannot hold { or } in cluster mode (keys carry their own hash tag)",
            ));
        }
        match RedisLink::new(r, password, r.timeout.0) {
            Ok(link) => Some(Arc::new(RedisLimiter {
                link,
                script: redis::Script::new(SCRIPT),
                timeout: r.timeout.0,
                fail_open: r.on_failure == crate::config::FailurePolicy::FailOpen,
                key_prefix: r.key_prefix.clone(),
                purge_channel: r.purge_channel.clone(),
                failures: AtomicU64::new(0),
                source,
            })),
            Err((path, e)) => {
                faults.push(Fault::new(path, e));
                None
            }
        }
    }

    /// Whether keys must carry a hash tag (one request's keys in one slot).
    pub fn clustered(&self) -> bool {
        self.link.mode == RedisMode::Cluster
    }

    /// Publish `message` on `channel` (within the timeout the limits use, at least a
    /// second: a purge is rarer and matters more than one decision).
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), String> {
        let deadline = self.timeout.max(Duration::from_secs(1));
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        let send = self.link.exec::<i64>(Op::Cmd(&cmd));
        tokio::time::timeout(deadline, send)
            .await
            .map_err(|_| format!("no answer within {deadline:?}"))?
            .map(drop)
    }

    /// A connection of its own for subscribing (a subscribed connection can do nothing else).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, String> {
        let deadline = self.timeout.max(Duration::from_secs(1));
        tokio::time::timeout(deadline, self.link.pubsub())
            .await
            .map_err(|_| format!("no connection within {deadline:?}"))?
    }

    async fn run(&self, checks: &[Check]) -> Result<Vec<(i64, i64)>, String> {
        let mut inv = self.script.prepare_invoke();
        for c in checks {
            inv.key(&c.key)
                .arg(c.interval_us)
                .arg(c.tolerance_us)
                .arg(if c.enforce { "1" } else { "0" });
        }
        self.link.exec(Op::Script(&inv)).await
    }

    /// Decide every check in one round trip, or say why Redis could not.
    pub async fn decide(&self, checks: &[Check]) -> Result<Vec<Verdict>, String> {
        let result = match tokio::time::timeout(self.timeout, self.run(checks)).await {
            Ok(r) => r,
            Err(_) => {
                // Still connecting when time ran out: Redis is unreachable, so the next
                // requests do not each wait for a new attempt.
                if !self.link.connected() {
                    self.link.note_connection_failure();
                }
                Err(format!("no answer within {:?}", self.timeout))
            }
        };
        let raw = result.inspect_err(|_| {
            self.failures.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(checks
            .iter()
            .zip(raw)
            .map(|(c, (allowed, ahead))| {
                let ahead = Duration::from_micros(ahead.max(0) as u64);
                let capacity = c.tolerance_us + c.interval_us;
                if allowed == 1 {
                    let used = ahead.as_micros() as u64;
                    Verdict {
                        allowed: true,
                        remaining: capacity.saturating_sub(used) / c.interval_us.max(1),
                        reset_after: ahead,
                        retry_after: Duration::ZERO,
                    }
                } else {
                    Verdict {
                        allowed: false,
                        remaining: 0,
                        reset_after: ahead,
                        retry_after: ahead.saturating_sub(Duration::from_micros(c.tolerance_us)),
                    }
                }
            })
            .collect())
    }
}
