//! Purges that reach every gateway sharing the Redis: a purge through any gateway's admin
//! API (or `PURGE`) is applied there at once and published on a Redis channel; every other
//! gateway subscribes and applies it on arrival. Redis pub/sub delivers only to those
//! connected, so a gateway whose subscription was lost purges everything when it is back:
//! whatever it missed is gone with the rest.

use crate::cache::purge;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a lost subscription waits before it is tried again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// What to drop: the same choices as `POST /cache/purge`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Purge {
    /// An absolute `http(s)://` URL (every stored variant of it).
    Url(String),
    /// An absolute URL prefix.
    Prefix(String),
    All,
}

/// A purge on the channel, and the gateway it came from (which ignores its own).
#[derive(Serialize, Deserialize, Debug)]
struct Message {
    from: u64,
    purge: Purge,
}

/// This process among the fleet's gateways.
fn instance() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(crate::random::u64)
}

/// Apply `p` to this gateway's cache; how many responses were dropped, or why `p` is not
/// a purge.
pub fn apply(rt: &Runtime, p: &Purge) -> Result<usize, &'static str> {
    let store = rt.cache.store;
    match p {
        Purge::Url(url) => {
            let (host, path, query) =
                purge::split_absolute(url).ok_or("url must be an absolute http(s) URL")?;
            Ok(purge::url(
                rt,
                &host,
                &path,
                query.as_deref(),
                &http::HeaderMap::new(),
            ))
        }
        Purge::Prefix(prefix) => {
            let (host, path, query) =
                purge::split_absolute(prefix).ok_or("prefix must be an absolute http(s) URL")?;
            let mut key = format!("{host}{path}");
            if let Some(q) = query {
                key.push('?');
                key.push_str(&q);
            }
            Ok(store.purge_prefix(&key))
        }
        Purge::All => Ok(store.purge_all()),
    }
}

/// Tell the other gateways; `None` when there is no Redis (a single gateway), else whether
/// the message went out.
pub async fn publish(rt: &Runtime, p: &Purge) -> Option<Result<(), String>> {
    let redis = rt.redis.as_ref()?;
    let message = Message {
        from: instance(),
        purge: p.clone(),
    };
    let text = match serde_json::to_string(&message) {
        Ok(t) => t,
        Err(e) => return Some(Err(e.to_string())),
    };
    let sent = redis.publish(&redis.purge_channel, &text).await;
    if let Err(e) = &sent {
        log::warn!("cache purge not sent to the fleet: {e}");
    }
    Some(sent)
}

/// Keep a subscription to the purge channel of the current config's Redis, applying what
/// other gateways publish, for as long as the process runs.
pub async fn subscribe(runtime: Arc<ArcSwap<Runtime>>) {
    let mut subscribed_before = false;
    loop {
        let rt = runtime.load_full();
        let Some(redis) = rt.redis.clone() else {
            tokio::time::sleep(RESUBSCRIBE).await;
            continue;
        };
        let mut pubsub = match redis.pubsub().await {
            Ok(p) => p,
            Err(e) => {
                log::debug!("cache purge channel: cannot connect: {e}");
                tokio::time::sleep(RESUBSCRIBE).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&redis.purge_channel).await {
            log::warn!("cache purge channel: cannot subscribe: {e}");
            tokio::time::sleep(RESUBSCRIBE).await;
            continue;
        }
        if subscribed_before {
            // Purges published while this gateway was away were missed.
            let n = rt.cache.store.purge_all();
            log::warn!(
                "cache purge channel: subscribed again; purged all {n} stored responses, \
                 which may have missed purges meanwhile"
            );
            crate::observe::metrics::fleet_purge("resubscribed");
        }
        subscribed_before = true;
        drop(rt);
        let mut messages = pubsub.on_message();
        loop {
            let next = tokio::time::timeout(RESUBSCRIBE, messages.next()).await;
            let current = runtime.load_full();
            // A reload that changed the Redis: subscribe there instead.
            if !current
                .redis
                .as_ref()
                .is_some_and(|r| Arc::ptr_eq(r, &redis))
            {
                break;
            }
            let msg = match next {
                Err(_) => continue,
                Ok(None) => {
                    log::warn!("cache purge channel: subscription lost; subscribing again");
                    break;
                }
                Ok(Some(msg)) => msg,
            };
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            match serde_json::from_str::<Message>(&payload) {
                Ok(m) if m.from == instance() => {}
                Ok(m) => match apply(&current, &m.purge) {
                    Ok(n) => {
                        log::info!("cache purge from the fleet: {:?} dropped {n}", m.purge);
                        crate::observe::metrics::fleet_purge("applied");
                    }
                    Err(e) => log::warn!("cache purge from the fleet refused: {e}"),
                },
                Err(e) => log::warn!("cache purge channel: not a purge message: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
