//! The connection to the Redis deployment a fleet shares: one server, a Redis Cluster, or the
//! master Sentinel names. Cluster limits and cache purges go through it, so they work alike
//! in every mode.
//!
//! - `standalone`: a connection manager that reconnects to the one address.
//! - `cluster`: the `redis` crate's cluster connection, which learns the slot map from any
//!   seed node, follows MOVED/ASK redirections and relearns the map when a master fails over.
//! - `sentinel`: the master's address comes from the Sentinels. A lost connection, or a
//!   server that answers READONLY (a master demoted to replica), makes the next call ask the
//!   Sentinels again, so decisions resume on the promoted master by themselves.
//!
//! After a failed connect no new one is tried for one `timeout`, so an outage costs a check
//! per request rather than a connect per request, and decisions resume at most one
//! `timeout` after Redis (or a promoted master) answers again.

use crate::config::{RedisMode, RedisSection};
use arc_swap::ArcSwapOption;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, ErrorKind, FromRedisValue, IntoConnectionInfo,
    RedisError, RedisFuture, ScriptInvocation, Value,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A usable connection of any mode; clones share the underlying connection.
#[derive(Clone)]
pub enum Conn {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Direct(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Target {
    Standalone(redis::Client),
    Cluster {
        client: redis::cluster::ClusterClient,
        /// Where a purge subscription may go: any node of the cluster hears every PUBLISH.
        seeds: Vec<ConnectionInfo>,
    },
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// One operation, run with a retry on a connection that was lost under it.
pub enum Op<'a> {
    Script(&'a ScriptInvocation<'a>),
    Cmd(&'a Cmd),
}

pub struct RedisLink {
    target: Target,
    pub mode: RedisMode,
    /// The connection in use; read without a lock on the request path.
    conn: ArcSwapOption<Conn>,
    /// Held only while connecting, so that one caller connects and the others wait for it.
    connecting: tokio::sync::Mutex<()>,
    last_connect_failure: Mutex<Option<Instant>>,
    timeout: Duration,
}

/// A URL list item, or the fault at `field`.
fn parse(url: &str, field: String, password: &Option<String>) -> Result<ConnectionInfo, Fault> {
    let mut info = url
        .into_connection_info()
        .map_err(|e| (field, format!("not a Redis URL: {e}")))?;
    if password.is_some() {
        info.redis.password = password.clone();
    }
    Ok(info)
}

/// A YAML path under `redis` and what is wrong there.
pub type Fault = (String, String);

impl RedisLink {
    /// The link a `redis` section describes; `password` (from `password_file`) is used for
    /// the data nodes in every mode.
    pub fn new(
        section: &RedisSection,
        password: Option<String>,
        timeout: Duration,
    ) -> Result<RedisLink, Fault> {
        let urls = |name: &str| -> Result<Vec<ConnectionInfo>, Fault> {
            if section.urls.is_empty() {
                return Err((
                    "redis.urls".into(),
                    format!("{name} mode needs at least one address in urls"),
                ));
            }
            let pw = if name == "sentinel" { &None } else { &password };
            section
                .urls
                .iter()
                .enumerate()
                .map(|(i, u)| parse(u, format!("redis.urls[{i}]"), pw))
                .collect()
        };
        let target = match section.mode {
            RedisMode::Standalone => {
                let info = match (&section.url, section.urls.as_slice()) {
                    (Some(url), []) => parse(url, "redis.url".into(), &password)?,
                    (None, [url]) => parse(url, "redis.urls[0]".into(), &password)?,
                    (None, []) => return Err(("redis.url".into(), "is required".into())),
                    _ => return Err((
                        "redis.urls".into(),
                        "standalone mode takes one address: use url, or mode cluster / sentinel"
                            .into(),
                    )),
                };
                let client = redis::Client::open(info)
                    .map_err(|e| ("redis.url".to_string(), format!("not a Redis URL: {e}")))?;
                Target::Standalone(client)
            }
            RedisMode::Cluster => {
                if section.url.is_some() {
                    return Err(("redis.url".into(), "cluster mode uses urls".into()));
                }
                let seeds = urls("cluster")?;
                let client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // The request's own deadline bounds the wait; a couple of quick retries
                    // ride out a redirection or a slot map being relearned.
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| ("redis.urls".to_string(), e.to_string()))?;
                Target::Cluster { client, seeds }
            }
            RedisMode::Sentinel => {
                if section.url.is_some() {
                    return Err(("redis.url".into(), "sentinel mode uses urls".into()));
                }
                let Some(master) = section.master_name.clone().filter(|m| !m.is_empty()) else {
                    return Err((
                        "redis.master_name".into(),
                        "sentinel mode needs the master's name".into(),
                    ));
                };
                let sentinels = urls("sentinel")?;
                let node = redis::sentinel::SentinelNodeConnectionInfo {
                    tls_mode: None,
                    redis_connection_info: Some(redis::RedisConnectionInfo {
                        password: password.clone(),
                        ..Default::default()
                    }),
                };
                let client = redis::sentinel::SentinelClient::build(
                    sentinels,
                    master,
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|e| ("redis.urls".to_string(), e.to_string()))?;
                Target::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        if section.mode != RedisMode::Sentinel && section.master_name.is_some() {
            return Err((
                "redis.master_name".into(),
                "only sentinel mode names a master".into(),
            ));
        }
        Ok(RedisLink {
            target,
            mode: section.mode,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            last_connect_failure: Mutex::new(None),
            timeout,
        })
    }

    /// A connection failed less than a `timeout` ago: answer at once instead of making
    /// every request wait for another attempt.
    pub fn backing_off(&self) -> bool {
        let last = self
            .last_connect_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        last.is_some_and(|t| t.elapsed() < self.timeout)
    }

    pub fn note_connection_failure(&self) {
        *self
            .last_connect_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether a connection is up (for telling a slow Redis from an unreachable one).
    pub fn connected(&self) -> bool {
        self.conn.load().is_some()
    }

    fn node_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
    }

    /// The current master's client, as the Sentinels name it now.
    async fn sentinel_master(
        sentinel: &tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    ) -> Result<redis::Client, RedisError> {
        sentinel.lock().await.async_get_client().await
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        match &self.target {
            Target::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Conn::Managed)
            }
            Target::Cluster { client, .. } => {
                client.get_async_connection().await.map(Conn::Cluster)
            }
            Target::Sentinel(sentinel) => {
                let master = Self::sentinel_master(sentinel).await?;
                master
                    .get_multiplexed_async_connection_with_config(&self.node_config())
                    .await
                    .map(Conn::Direct)
            }
        }
    }

    /// The connection in use, or a new one.
    pub async fn connection(&self) -> Result<Conn, String> {
        if let Some(c) = self.conn.load_full() {
            return Ok(Conn::clone(&c));
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok(Conn::clone(&c));
        }
        if self.backing_off() {
            return Err("Redis unreachable (trying again after the timeout)".into());
        }
        match self.connect().await {
            Ok(c) => {
                self.conn.store(Some(Arc::new(c.clone())));
                Ok(c)
            }
            Err(e) => {
                self.note_connection_failure();
                Err(format!("cannot connect: {e}"))
            }
        }
    }

    /// The connection is gone or talks to the wrong server: in Sentinel mode the next call
    /// asks the Sentinels where the master is now. (The standalone manager and the cluster
    /// connection reconnect by themselves.)
    fn drop_connection(&self) {
        if matches!(self.target, Target::Sentinel(_)) {
            self.conn.store(None);
        }
    }

    /// Run `op`; a connection lost under it (a restart, a failover) is replaced and the
    /// operation tried once more, so one request decides instead of failing.
    pub async fn exec<T: FromRedisValue>(&self, op: Op<'_>) -> Result<T, String> {
        let lost = |e: &RedisError| {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.kind() == ErrorKind::ReadOnly
        };
        if self.backing_off() {
            return Err("Redis unreachable (trying again after the timeout)".into());
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let mut conn = self.connection().await?;
            let result = match op {
                Op::Script(inv) => inv.invoke_async(&mut conn).await,
                Op::Cmd(cmd) => cmd.query_async(&mut conn).await,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if lost(&e) => {
                    self.drop_connection();
                    if tries >= 2 {
                        // In a cluster one node is down, not Redis: other slots still answer.
                        if !matches!(self.target, Target::Cluster { .. }) {
                            self.note_connection_failure();
                        }
                        return Err(e.to_string());
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// A connection of its own for subscribing (a subscribed connection can do nothing
    /// else). In a cluster any node hears every PUBLISH, so the first seed that answers
    /// serves; under Sentinel it is the current master.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, String> {
        let open = |client: redis::Client| async move { client.get_async_pubsub().await };
        match &self.target {
            Target::Standalone(client) => open(client.clone()).await.map_err(|e| e.to_string()),
            Target::Cluster { seeds, .. } => {
                let mut last = "no seed node".to_string();
                for seed in seeds {
                    let client = redis::Client::open(seed.clone()).map_err(|e| e.to_string())?;
                    match open(client).await {
                        Ok(p) => return Ok(p),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(last)
            }
            Target::Sentinel(sentinel) => {
                let master = Self::sentinel_master(sentinel)
                    .await
                    .map_err(|e| e.to_string())?;
                open(master).await.map_err(|e| e.to_string())
            }
        }
    }
}
