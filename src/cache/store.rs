//! The in-memory cache storage behind `pingora-cache`, under a byte budget.
//!
//! Entries are grouped by primary key (one URL as the route's key normalises it) into a
//! family: the primary slot plus the variants `Vary` or the route's key extras split off.
//! Purging a URL drops its whole family at once. Bodies are gathered once when stored and
//! served as shared `Bytes` on every hit, so a hit copies nothing. The budget is kept by
//! `pingora-cache`'s sharded LRU eviction manager, which sees every entry's full weight.

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use pingora_cache::eviction::{lru, CacheEntryKeyRef, EvictionManager};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::ResponseHeader;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

pub const SHARDS: usize = 16;

/// Bookkeeping per entry beyond its bytes: map slots (at the maps' load factor), keys,
/// `Arc`s, LRU node. With [`HEADER_SLOT`] this matches what heaptrack shows a stored entry
/// holding, so the budget bounds real memory.
const ENTRY_OVERHEAD: usize = 640;
/// A header map reserves a power of two of these slots (index and bucket).
const HEADER_SLOT: usize = 128;

/// What a hit needs to rebuild its `CacheMeta`. Decoding Pingora's serialized meta costs
/// ~5 µs a hit (its header block is compressed); rebuilding from parts costs a header clone.
// One per entry behind an `Arc`; boxing the large variant would only add an indirection.
#[allow(clippy::large_enum_variant)]
enum StoredMeta {
    Parts {
        fresh_until: SystemTime,
        created: SystemTime,
        /// `epoch_override` or `updated`: what age is measured from.
        epoch: SystemTime,
        swr: u32,
        sie: u32,
        variance: Option<HashBinary>,
        header: ResponseHeader,
    },
    /// A meta whose provenance differs from its creation time, which only the serialized
    /// form can carry.
    Serialized(Vec<u8>, Vec<u8>),
}

impl StoredMeta {
    fn new(meta: &CacheMeta) -> Result<Self> {
        if meta.provenance() != meta.created() {
            let (a, b) = meta.serialize()?;
            return Ok(StoredMeta::Serialized(a, b));
        }
        Ok(StoredMeta::Parts {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            swr: meta.stale_while_revalidate_sec(),
            sie: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: compact(meta.response_header())?,
        })
    }

    fn meta(&self) -> Result<CacheMeta> {
        match self {
            StoredMeta::Parts {
                fresh_until,
                created,
                epoch,
                swr,
                sie,
                variance,
                header,
            } => {
                let mut m = CacheMeta::new(*fresh_until, *created, *swr, *sie, header.clone());
                if let Some(v) = variance {
                    m.set_variance(*v);
                }
                if epoch != created {
                    m.set_epoch_override(*epoch);
                }
                Ok(m)
            }
            StoredMeta::Serialized(a, b) => CacheMeta::deserialize(a, b),
        }
    }

    /// Bytes it holds beyond its own struct.
    fn size(&self) -> usize {
        match self {
            StoredMeta::Parts { header, .. } => {
                let slots = header.headers.len().next_power_of_two() * HEADER_SLOT;
                let bytes: usize = header
                    .headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len())
                    .sum();
                slots + bytes
            }
            StoredMeta::Serialized(a, b) => a.len() + b.len(),
        }
    }
}

type SharedMeta = Arc<StoredMeta>;

/// A deep copy sized to its headers. Parsed header values share the 4 KiB buffer the
/// response was read into, so a plain clone would keep that buffer alive per entry (~5 KB
/// unaccounted for a 100-byte response). Header-name case is not kept (names go out
/// lower-case).
fn compact(h: &ResponseHeader) -> Result<ResponseHeader> {
    let mut out = ResponseHeader::build_no_case(h.status, Some(h.headers.len()))?;
    out.set_version(h.version);
    out.set_reason_phrase(h.get_reason_phrase())?;
    for (name, value) in &h.headers {
        let value = http::HeaderValue::from_bytes(value.as_bytes())
            .or_err(ErrorType::InternalError, "stored header value")?;
        let name = http::HeaderName::from_bytes(name.as_str().as_bytes())
            .or_err(ErrorType::InternalError, "stored header name")?;
        out.append_header(name, value)?;
    }
    Ok(out)
}

struct Slot {
    meta: SharedMeta,
    body: Bytes,
    key: CompactCacheKey,
    weight: usize,
}

#[derive(Default)]
struct Family {
    /// The normalised URL, for prefix purges.
    uri: Box<str>,
    primary: Option<Slot>,
    variants: Vec<(HashBinary, Slot)>,
}

impl Family {
    fn slot(&self, variance: Option<HashBinary>) -> Option<&Slot> {
        match variance {
            None => self.primary.as_ref(),
            Some(v) => self.variants.iter().find(|(h, _)| *h == v).map(|(_, s)| s),
        }
    }

    fn slot_mut(&mut self, variance: Option<HashBinary>) -> Option<&mut Slot> {
        match variance {
            None => self.primary.as_mut(),
            Some(v) => self
                .variants
                .iter_mut()
                .find(|(h, _)| *h == v)
                .map(|(_, s)| s),
        }
    }

    fn slots(self) -> impl Iterator<Item = Slot> {
        self.primary
            .into_iter()
            .chain(self.variants.into_iter().map(|(_, s)| s))
    }
}

/// Counts for the admin API and the note.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Stats {
    pub entries: usize,
    pub bytes: usize,
    pub budget: usize,
    pub evicted_entries: usize,
    pub evicted_bytes: usize,
}

pub struct MemoryStore {
    shards: Vec<RwLock<HashMap<HashBinary, Family>>>,
    eviction: &'static lru::Manager<SHARDS>,
    /// Bodies beyond this are not stored (the response itself streams on untouched).
    max_object_size: AtomicUsize,
}

impl MemoryStore {
    pub fn new(eviction: &'static lru::Manager<SHARDS>) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            eviction,
            max_object_size: AtomicUsize::new(usize::MAX),
        }
    }

    pub fn set_max_object_size(&self, bytes: usize) {
        self.max_object_size.store(bytes, Ordering::Relaxed);
    }

    fn shard(&self, primary: &HashBinary) -> &RwLock<HashMap<HashBinary, Family>> {
        &self.shards[primary[0] as usize % SHARDS]
    }

    pub fn stats(&self) -> Stats {
        let e = self.eviction;
        Stats {
            entries: e.total_items(),
            bytes: e.total_size(),
            budget: e.weight_limit(),
            evicted_entries: e.evicted_items(),
            evicted_bytes: e.evicted_size(),
        }
    }

    fn forget(&self, slots: impl Iterator<Item = Slot>) -> usize {
        let mut n = 0;
        for slot in slots {
            self.eviction
                .remove(CacheEntryKeyRef::from_entry_id(&slot.key, None));
            n += 1;
        }
        n
    }

    /// Drop every stored response of one URL (all variants); returns how many.
    pub fn purge_family(&self, primary: &HashBinary) -> usize {
        let family = self.shard(primary).write().remove(primary);
        family.map_or(0, |f| self.forget(f.slots()))
    }

    /// Drop every stored response whose normalised URL starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let mut n = 0;
        for shard in &self.shards {
            let removed: Vec<Family> = {
                let mut map = shard.write();
                let keys: Vec<HashBinary> = map
                    .iter()
                    .filter(|(_, f)| f.uri.starts_with(prefix))
                    .map(|(k, _)| *k)
                    .collect();
                keys.iter().filter_map(|k| map.remove(k)).collect()
            };
            n += removed
                .into_iter()
                .map(|f| self.forget(f.slots()))
                .sum::<usize>();
        }
        n
    }

    pub fn purge_all(&self) -> usize {
        self.purge_prefix("")
    }

    fn insert(&self, key: CompactCacheKey, uri: &[u8], meta: SharedMeta, body: Bytes) -> usize {
        let weight = body.len() + meta.size() + uri.len() * 2 + ENTRY_OVERHEAD;
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let slot = Slot {
            meta,
            body,
            key,
            weight,
        };
        let mut map = self.shard(&primary).write();
        let family = map.entry(primary).or_insert_with(|| Family {
            uri: String::from_utf8_lossy(uri).into(),
            ..Family::default()
        });
        match variance {
            None => family.primary = Some(slot),
            Some(v) => match family.slot_mut(Some(v)) {
                Some(existing) => *existing = slot,
                None => family.variants.push((v, slot)),
            },
        }
        weight
    }
}

#[async_trait::async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let primary = key.primary_bin();
        let found = {
            let map = self.shard(&primary).read();
            map.get(&primary)
                .and_then(|f| f.slot(key.variance_bin()))
                .map(|s| (s.meta.clone(), s.body.clone(), s.weight))
        };
        let Some((meta, body, weight)) = found else {
            return Ok(None);
        };
        let meta = meta.meta()?;
        let end = body.len();
        let hit = Hit {
            body,
            start: 0,
            end,
            done: false,
            weight,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let expected = meta
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        Ok(Box::new(Fill {
            store: self,
            key: key.to_compact(),
            uri: key.primary_key().to_vec(),
            meta: Arc::new(StoredMeta::new(meta)?),
            body: BytesMut::with_capacity(expected.min(1 << 20)),
            limit: self.max_object_size.load(Ordering::Relaxed),
            too_large: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        let primary = key.primary_bin();
        let removed: Vec<Slot> = {
            let mut map = self.shard(&primary).write();
            match key.variance_bin() {
                // Without the primary slot no variant can be found again: drop them all.
                None => map
                    .remove(&primary)
                    .map(|f| f.slots().collect())
                    .unwrap_or_default(),
                Some(v) => map
                    .get_mut(&primary)
                    .and_then(|f| {
                        let i = f.variants.iter().position(|(h, _)| *h == v)?;
                        Some(vec![f.variants.swap_remove(i).1])
                    })
                    .unwrap_or_default(),
            }
        };
        if removed.is_empty() {
            return Ok(PurgeOutcome::NotFound);
        }
        // The manager already dropped the entry it evicted; the rest it must forget here.
        let others = removed
            .into_iter()
            .filter(|s| !matches!(purge_type, PurgeType::Eviction) || &s.key != key);
        self.forget(others);
        Ok(PurgeOutcome::Purged(None))
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let stored = Arc::new(StoredMeta::new(meta)?);
        let primary = key.primary_bin();
        let mut map = self.shard(&primary).write();
        match map
            .get_mut(&primary)
            .and_then(|f| f.slot_mut(key.variance_bin()))
        {
            Some(slot) => {
                slot.meta = stored;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Serves one stored body; seeking serves ranges without copying.
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
    weight: usize,
}

#[async_trait::async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start {start} beyond body of {len} bytes"),
            );
        }
        self.start = start;
        self.end = end.map_or(len, |e| e.min(len));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Gathers one response body; stored only when `finish` runs (a dropped fill stores
/// nothing).
struct Fill {
    store: &'static MemoryStore,
    key: CompactCacheKey,
    uri: Vec<u8>,
    meta: SharedMeta,
    body: BytesMut,
    limit: usize,
    /// The body outgrew `limit`: gathering stopped and nothing will be stored. Pingora's own
    /// size limit would instead cut the client's response off mid-body.
    too_large: bool,
}

#[async_trait::async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.too_large || self.body.len() + data.len() > self.limit {
            self.too_large = true;
            self.body = BytesMut::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.too_large {
            return Error::e_explain(
                ErrorType::InternalError,
                format!(
                    "response body over max_object_size ({} bytes): not stored",
                    self.limit
                ),
            );
        }
        let Fill {
            store,
            key,
            uri,
            meta,
            body,
            ..
        } = *self;
        let weight = store.insert(key, &uri, meta, body.freeze());
        Ok(MissFinishType::Created(weight))
    }
}
