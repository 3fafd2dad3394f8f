//! Real Redis deployments on loopback: a Redis Cluster of three masters with a replica each,
//! and a master with a replica watched by three Sentinels. The data nodes require a
//! password, as production ones do; the gateway reads it from [`Secret::file`].

use super::{eventually, free_port, RedisServer};
use std::path::PathBuf;
use std::time::Duration;

/// The data nodes' password (Sentinels themselves take none here).
pub const PASSWORD: &str = "fleet-redis-password";

/// The password in a file, for `redis.password_file`.
pub struct Secret {
    pub file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Secret {
    fn new() -> Secret {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("redis-password");
        std::fs::write(&file, format!("{PASSWORD}\n")).expect("password file");
        Secret { file, _dir: dir }
    }
}

/// The `redis-server` arguments that make a data node require the password (and use it
/// towards its master once it is a replica).
const AUTH: [&str; 4] = ["--requirepass", PASSWORD, "--masterauth", PASSWORD];

/// A data node answers with the password.
fn query(port: u16, args: &[&str]) -> Result<redis::Value, String> {
    query_as(port, Some(PASSWORD), args)
}

fn query_as(port: u16, password: Option<&str>, args: &[&str]) -> Result<redis::Value, String> {
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let client = redis::Client::open(format!("redis://{auth}127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn).map_err(|e| e.to_string())
}

fn text(port: u16, args: &[&str]) -> String {
    as_text(query(port, args))
}

fn sentinel_text(port: u16, args: &[&str]) -> String {
    as_text(query_as(port, None, args))
}

fn as_text(answer: Result<redis::Value, String>) -> String {
    match answer {
        Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(redis::Value::VerbatimString { text, .. }) => text,
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error: {e}"),
    }
}

/// The servers' URLs as a YAML list.
fn yaml_urls(servers: &[RedisServer]) -> String {
    let urls: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.url())).collect();
    format!("[{}]", urls.join(", "))
}

/// Subscribers of the purge channel on the server at `port`.
pub fn purge_subscribers(port: u16) -> i64 {
    match query(port, &["PUBSUB", "NUMSUB", "portico:purge"]) {
        Ok(redis::Value::Array(v)) => match v.get(1) {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

/// Three masters, each with one replica; a failed master's replica takes over after the
/// node timeout (one second).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    pub secret: Secret,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                let bus = free_port().to_string();
                RedisServer::start_with(
                    free_port(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        &bus,
                        "--cluster-node-timeout",
                        "1000",
                        "--repl-diskless-sync-delay",
                        "0",
                        AUTH[0],
                        AUTH[1],
                        AUTH[2],
                        AUTH[3],
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .args(["-a", PASSWORD, "--no-auth-warning"])
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster {
            nodes,
            secret: Secret::new(),
        };
        assert!(
            eventually(Duration::from_secs(30), || {
                cluster
                    .nodes
                    .iter()
                    .all(|n| text(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            }),
            "the cluster did not come up"
        );
        cluster
    }

    /// `redis.urls` for the gateway: every node is a seed.
    pub fn urls(&self) -> String {
        yaml_urls(&self.nodes)
    }

    /// The node now serving `key` as master (asked of any live node), if one does.
    pub fn master_of(&self, key: &str) -> Option<usize> {
        let slot = self
            .nodes
            .iter()
            .find_map(|n| match query(n.port, &["CLUSTER", "KEYSLOT", key]) {
                Ok(redis::Value::Int(s)) => Some(s),
                _ => None,
            })
            .expect("a live node answers CLUSTER KEYSLOT");
        let live = self
            .nodes
            .iter()
            .find(|n| query(n.port, &["PING"]).is_ok())
            .expect("a live node");
        let table = text(live.port, &["CLUSTER", "NODES"]);
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<i64>(), hi.parse::<i64>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if owns {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("host:port@bus");
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// Purge subscribers over the whole cluster (each gateway subscribes on one node).
    pub fn purge_subscribers(&self) -> i64 {
        self.nodes.iter().map(|n| purge_subscribers(n.port)).sum()
    }

    /// Keys stored on node `i` matching `pattern`.
    pub fn keys_on(&self, i: usize, pattern: &str) -> Vec<String> {
        match query(self.nodes[i].port, &["KEYS", pattern]) {
            Ok(redis::Value::Array(keys)) => keys
                .into_iter()
                .filter_map(|k| match k {
                    redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every live node's view of the cluster, for a failure message.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                format!(
                    "node {}:\n{}\nlog: {}\n",
                    n.port,
                    text(n.port, &["CLUSTER", "NODES"]),
                    tail.join(" | ")
                )
            })
            .collect()
    }

    /// Whether the cluster has taken `key`'s slot over onto a node other than `dead`.
    pub fn failed_over(&self, key: &str, dead: usize) -> bool {
        let live = self.nodes.iter().enumerate().filter(|(i, _)| *i != dead);
        live.into_iter()
            .all(|(_, n)| text(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            && self.master_of(key).is_some_and(|m| m != dead)
    }
}

/// A master with one replica and three Sentinels (quorum two) watching them as `portico`.
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
    pub secret: Secret,
}

pub const MASTER_NAME: &str = "portico";

impl RedisSentinels {
    pub fn start() -> RedisSentinels {
        let master = RedisServer::start_with(free_port(), &AUTH);
        let master_port = master.port.to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &master_port];
        replica_args.extend(AUTH);
        let replica = RedisServer::start_with(free_port(), &replica_args);
        assert!(
            eventually(Duration::from_secs(30), || {
                text(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
            }),
            "the replica did not sync"
        );
        let sentinels = (0..3)
            .map(|_| {
                RedisServer::start_sentinel(
                    free_port(),
                    &format!(
                        "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                         sentinel auth-pass {MASTER_NAME} {PASSWORD}\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n",
                        master.port
                    ),
                )
            })
            .collect();
        let deployment = RedisSentinels {
            master,
            replica,
            sentinels,
            secret: Secret::new(),
        };
        assert!(
            eventually(Duration::from_secs(30), || {
                deployment.sentinels.iter().all(|s| {
                    let info = sentinel_text(s.port, &["INFO", "sentinel"]);
                    info.contains("slaves=1") && info.contains("sentinels=3")
                })
            }),
            "the Sentinels did not find each other"
        );
        deployment
    }

    /// `redis.urls` for the gateway: the Sentinels.
    pub fn urls(&self) -> String {
        yaml_urls(&self.sentinels)
    }

    /// Purge subscribers on the current master.
    pub fn purge_subscribers(&self) -> i64 {
        self.master_port().map_or(0, purge_subscribers)
    }

    /// The port the Sentinels now name as master.
    pub fn master_port(&self) -> Option<u16> {
        let s = self
            .sentinels
            .iter()
            .find(|s| query_as(s.port, None, &["PING"]).is_ok())?;
        match query_as(
            s.port,
            None,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        ) {
            Ok(redis::Value::Array(v)) => match v.get(1) {
                Some(redis::Value::BulkString(p)) => String::from_utf8_lossy(p).parse().ok(),
                _ => None,
            },
            _ => None,
        }
    }
}
