//! The read-through cache: [`Cache::open_object`] answers with a handle to a complete,
//! verified local copy of the object, to a fill under way (a miss: reads are answered as
//! their bytes land, see `fill.rs`), or to a direct-from-S3 reader when the cache is off
//! or cannot help (`direct.rs`). The cache never breaks a read.
//!
//! # Files
//!
//! - `mod.rs`: the [`Cache`] facade: opening the cache, the open path (hit, join a
//!   download, miss, read directly), warming ahead of use, stats, clear and close.
//! - `config.rs`: [`CacheConfig`] and [`CacheError`].
//! - `handle.rs`: [`ObjectHandle`], what an open returns, and where its reads go.
//! - `download.rs`: one download per key: starting or joining it, finishing it, waiting
//!   for downloads. `fill.rs`: one download's transfer (parallel ranged GETs into a
//!   temporary file, reads answered as their bytes land, checksums as it goes).
//! - `direct.rs`: reads straight from S3.
//! - `disk.rs`: the on-disk half, which owns the directory, the index and the db and keeps
//!   them in agreement (commits, evictions, expiry; the ordering that makes crashes
//!   safe); `disk/reconcile.rs`: the check of the disk against the index at every start.
//! - `layout.rs`: the directory (shards, `tmp/`, the lock); `index.rs`: the in-memory LRU
//!   index and the limits; `db.rs`: the index on disk (redb).
//! - `key.rs`, `clock.rs`, `ranges.rs`, `stats.rs`: cache keys, time, byte ranges, the
//!   counters behind `.cache-stats`. `metrics.rs`: first-byte latency and download speed
//!   for `/metrics`. `inspect.rs`: a cache directory no mount has open.

mod checksum;
mod clock;
mod config;
pub mod db;
mod direct;
mod disk;
mod download;
mod fill;
mod handle;
mod index;
pub mod inspect;
mod key;
mod layout;
mod metrics;
mod ranges;
pub mod shared;
mod stats;

pub use crate::store::s3_url;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{CacheConfig, CacheError};
pub use db::{DbError, EntryRow};
pub use handle::{ObjectHandle, Outcome};
pub use index::{Entry, Index, NoRoom, TooLarge};
pub use key::CacheKey;
pub use layout::{INDEX_FILE, LayoutError, check_dir, open_private_append};
pub use metrics::CacheMetrics;
pub(crate) use stats::Stats;
pub use stats::StatsSnapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::store::{ObjectMeta, ObjectStore, StoreError};
use direct::DirectReader;
use disk::Disk;
use download::Download;
use fill::Fill;
use handle::Source;
use shared::SharedTier;
use stats::bump;

/// What every clone of a [`Cache`] shares.
struct Inner {
    cfg: CacheConfig,
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
    disk: Option<Arc<Disk>>,
    /// The tier between this cache and the origin that many hosts share, if any.
    shared: Option<Arc<SharedTier>>,
    /// Disk trouble is reported once, not on every open.
    warned_disk: std::sync::atomic::AtomicBool,
}

/// Cheap to clone; all clones share one cache.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl Cache {
    /// Opens (or creates) the cache directory. Must be called inside a Tokio runtime: the
    /// periodic sweep and the check of the disk against the index run as tasks on it.
    ///
    /// A directory that cannot be trusted or used is an error (the mount refuses to
    /// start); an index that cannot be read is set aside and rebuilt from the files.
    pub fn open(
        cfg: CacheConfig,
        store: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Cache, CacheError> {
        Cache::open_tiered(cfg, store, None, clock)
    }

    /// [`Cache::open`] with a shared tier between the cache and the origin `store`.
    pub fn open_tiered(
        cfg: CacheConfig,
        store: Arc<dyn ObjectStore>,
        shared: Option<Arc<SharedTier>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Cache, CacheError> {
        let stats = Arc::new(Stats::default());
        let disk = if cfg.enabled {
            Some(Disk::open(&cfg, stats.clone(), clock.clone())?)
        } else {
            None
        };
        Ok(Cache {
            inner: Arc::new(Inner {
                cfg,
                store,
                clock,
                stats,
                disk,
                shared,
                warned_disk: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.cfg
    }

    pub fn enabled(&self) -> bool {
        self.inner.disk.is_some()
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    pub fn stats(&self) -> StatsSnapshot {
        let (count, size) = match &self.inner.disk {
            Some(d) => {
                let ix = d.index.lock();
                (ix.len(), ix.total_size())
            }
            None => (0, 0),
        };
        self.inner.stats.snapshot(stats::Levels {
            enabled: self.enabled(),
            entry_count: count,
            total_size: size,
            max_size: self.inner.cfg.max_size,
            max_entries: self.inner.cfg.max_entries,
            s3_unreachable: !self.inner.store.reachable(),
            shared: self.inner.shared.as_ref().map(|t| t.snapshot()),
        })
    }

    /// Counts a read request that reached s3cachefs (not a passthrough read).
    pub fn count_read_request(&self) {
        bump(&self.inner.stats.read_requests);
    }

    /// Counts an answer given from what was known because S3 could not be asked (a
    /// listing served stale).
    pub fn count_stale_served(&self) {
        bump(&self.inner.stats.stale_served);
    }

    /// Counts an open the kernel reads itself (passthrough): its `size` bytes count as
    /// served from the cache, since its reads never reach us.
    pub fn count_passthrough_open(&self, size: u64) {
        bump(&self.inner.stats.passthrough_opens);
        stats::add(&self.inner.stats.bytes_from_cache, size);
    }

    /// Counts an error returned to a program (an EIO of an open, read or listing).
    pub fn count_error(&self) {
        bump(&self.inner.stats.errors);
    }

    /// Opens `s3://bucket/key` through the cache. `known` is metadata learned recently
    /// (from a listing or HEAD within the caller's metadata TTL); with an ETag in it no
    /// HEAD is needed to validate.
    pub async fn open_object(
        &self,
        bucket: &str,
        key: &str,
        known: Option<ObjectMeta>,
    ) -> Result<ObjectHandle, CacheError> {
        let inner = &self.inner;
        if inner.disk.is_none() {
            bump(&inner.stats.misses);
            let meta = match known.filter(|m| m.etag.is_some()) {
                Some(m) => m,
                None => inner.store.head(bucket, key).await?,
            };
            return Ok(self.direct(bucket, key, &meta));
        };
        let k = CacheKey::new(bucket, key, &inner.cfg.profile);
        // What S3 last said of the object (its ETag), when known: opens and joins check
        // against it, and learn it from S3 when they ask.
        let mut latest = known.filter(|m| m.etag.is_some());
        // A fill can complete between looking in the index and joining it: look again.
        let mut stale: Option<Arc<Fill>> = None;
        for _ in 0..4 {
            if let Some(h) = self.open_cached(k, bucket, key, &mut latest).await? {
                return Ok(h);
            }
            let joining = self
                .fill_or_join(k, bucket, key, latest.clone(), stale.take(), true)
                .await;
            let (fill, joined) = match joining {
                Ok(Some(Download::Started(f))) => (f, false),
                Ok(Some(Download::Joined(f))) => (f, true),
                Ok(None) => continue,
                // Joined a download ahead of use that found no room: this open may evict.
                Err(CacheError::NoRoom(_)) => continue,
                Err(e) => return self.cannot_fill(bucket, key, latest, &e).await,
            };
            // A download started by someone else may be of a version replaced since.
            if joined && (inner.cfg.validate_etag || latest.is_some()) {
                let current = self.current_version(&fill, &latest, bucket, key).await?;
                if current.etag.as_deref() != Some(fill.etag.as_str()) {
                    bump(&inner.stats.etag_mismatches);
                    latest = Some(current);
                    stale = Some(fill);
                    continue;
                }
            }
            // Joining a download whose bytes are all here already is served from disk.
            let outcome = if joined && fill.all_landed() {
                bump(&inner.stats.hits);
                Outcome::Hit
            } else {
                bump(&inner.stats.misses);
                Outcome::Miss
            };
            return Ok(ObjectHandle::new(
                inner,
                bucket,
                key,
                &fill.etag.clone(),
                fill.size,
                outcome,
                Source::Filling(fill),
            ));
        }
        Err(CacheError::Internal(
            "cache entry kept changing while opening".into(),
        ))
    }

    /// The version a joined download must be of to serve this open: what the caller
    /// knew, else what S3 says now. A download ahead of use, or S3 not answering in time,
    /// counts as current.
    async fn current_version(
        &self,
        fill: &Fill,
        latest: &Option<ObjectMeta>,
        bucket: &str,
        key: &str,
    ) -> Result<ObjectMeta, CacheError> {
        let inner = &self.inner;
        Ok(match latest.clone() {
            Some(m) => m,
            // A download ahead of use learned its version moments ago.
            None if fill.read_ahead => ObjectMeta {
                etag: Some(fill.etag.clone()),
                ..ObjectMeta::default()
            },
            None => {
                bump(&inner.stats.etag_validations);
                match inner
                    .store
                    .head_within(bucket, key, inner.cfg.check_within())
                    .await
                {
                    Ok(m) => m,
                    Err(e) if e.is_transient() => ObjectMeta {
                        etag: Some(fill.etag.clone()),
                        ..ObjectMeta::default()
                    },
                    Err(e) => return Err(e.into()),
                }
            }
        })
    }

    /// Starts downloading an object into the cache ahead of use, unless it is cached or
    /// on its way already, or there is no room for it without evicting anything (a guess
    /// must not push out what was used). `size` is what the listing said. Returns the
    /// version and size when a download started; its opens will join it.
    pub async fn read_ahead(
        &self,
        bucket: &str,
        key: &str,
        size: u64,
        known: Option<ObjectMeta>,
    ) -> Result<Option<(String, u64)>, CacheError> {
        let inner = &self.inner;
        let Some(disk) = &inner.disk else {
            return Ok(None);
        };
        let k = CacheKey::new(bucket, key, &inner.cfg.profile);
        if disk.flights.lock().contains_key(&k) {
            return Ok(None);
        }
        {
            let ix = disk.index.lock();
            if ix.contains(&k) || !ix.victims_for(&k, size).is_ok_and(|v| v.is_empty()) {
                return Ok(None);
            }
        }
        match self
            .fill_or_join(
                k,
                bucket,
                key,
                known.filter(|m| m.etag.is_some()),
                None,
                false,
            )
            .await?
        {
            Some(Download::Started(fill)) => {
                bump(&inner.stats.prefetches);
                Ok(Some((fill.etag.clone(), fill.size)))
            }
            _ => Ok(None),
        }
    }

    /// The hit path: a valid cached copy, or `None` (after dropping what was unusable).
    async fn open_cached(
        &self,
        k: CacheKey,
        bucket: &str,
        key: &str,
        latest: &mut Option<ObjectMeta>,
    ) -> Result<Option<ObjectHandle>, CacheError> {
        let inner = &self.inner;
        let Some(disk) = &inner.disk else {
            return Ok(None);
        };
        // Two rounds at most: a cached entry can turn out stale or damaged.
        for _ in 0..2 {
            let cached = disk.index.lock().peek(&k).cloned();
            let Some(entry) = cached else { break };
            if index::is_expired(&entry, inner.clock.now_ms(), inner.cfg.ttl_ms()) {
                debug!(url = %s3_url(bucket, key), "cache entry expired");
                bump(&inner.stats.expirations);
                disk.remove_entries(&[k]);
                break;
            }
            let mut outcome = Outcome::Hit;
            if inner.cfg.validate_etag || latest.is_some() {
                let current = match latest.clone() {
                    Some(m) => Ok(m),
                    None => {
                        bump(&inner.stats.etag_validations);
                        inner
                            .store
                            .head_within(bucket, key, inner.cfg.check_within())
                            .await
                    }
                };
                match current {
                    Ok(m) if m.etag.as_deref() == Some(entry.etag.as_str()) => {}
                    Ok(m) => {
                        debug!(url = %s3_url(bucket, key), "ETag changed; refetching");
                        bump(&inner.stats.etag_mismatches);
                        disk.remove_entries(&[k]);
                        *latest = Some(m);
                        break;
                    }
                    Err(StoreError::NotFound(_)) => {
                        disk.remove_entries(&[k]);
                        return Err(StoreError::NotFound(s3_url(bucket, key)).into());
                    }
                    Err(e) if e.is_transient() => {
                        warn!(url = %s3_url(bucket, key), error = %e, "validation failed; serving cached copy");
                        bump(&inner.stats.stale_served);
                        outcome = Outcome::StaleHit;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            match disk.open_entry_file(&k, &entry).await {
                Some(file) => {
                    bump(&inner.stats.hits);
                    disk.index.lock().touch(&k, inner.clock.now_ms());
                    disk.dirty.lock().insert(k);
                    return Ok(Some(ObjectHandle::new(
                        inner,
                        bucket,
                        key,
                        &entry.etag,
                        entry.size,
                        outcome,
                        Source::File(file),
                    )));
                }
                None => continue,
            }
        }
        Ok(None)
    }

    /// A miss the cache cannot take (too large, no room, disk trouble): read S3 directly.
    async fn cannot_fill(
        &self,
        bucket: &str,
        key: &str,
        latest: Option<ObjectMeta>,
        e: &CacheError,
    ) -> Result<ObjectHandle, CacheError> {
        let inner = &self.inner;
        bump(&inner.stats.misses);
        match e {
            CacheError::Store(se) => return Err(CacheError::Store(se.clone())),
            CacheError::TooLarge(_) | CacheError::Full(_) => {
                bump(&inner.stats.not_kept);
                debug!(url = %s3_url(bucket, key), error = %e, "not kept in the cache; reading S3 directly");
            }
            other => {
                bump(&inner.stats.not_kept);
                if !inner
                    .warned_disk
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    warn!(url = %s3_url(bucket, key), error = %other, "cache cannot store objects; reading from S3 (reported once)");
                } else {
                    debug!(url = %s3_url(bucket, key), error = %other, "cache cannot store this object");
                }
            }
        }
        let meta = match latest {
            Some(m) => m,
            None => inner.store.head(bucket, key).await?,
        };
        Ok(self.direct(bucket, key, &meta))
    }

    /// Opens the object for reading straight from S3, bypassing the cache (`O_DIRECT`).
    pub async fn open_uncached(&self, bucket: &str, key: &str) -> Result<ObjectHandle, CacheError> {
        let meta = self.inner.store.head(bucket, key).await?;
        Ok(self.direct(bucket, key, &meta))
    }

    fn direct(&self, bucket: &str, key: &str, meta: &ObjectMeta) -> ObjectHandle {
        let etag = meta.etag.clone().unwrap_or_default();
        let reader = DirectReader::new(
            self.inner.store.clone(),
            self.inner.stats.clone(),
            bucket,
            key,
            &etag,
            meta.size,
        );
        ObjectHandle::new(
            &self.inner,
            bucket,
            key,
            &etag,
            meta.size,
            Outcome::Direct,
            Source::Direct(Arc::new(reader)),
        )
    }

    /// Empties the cache: every entry, every other file in the shards, and the downloads
    /// under way, which are cancelled so that nothing cleared lands afterwards. Handles
    /// already open keep reading: complete files they have open (now unlinked), S3 for a
    /// cancelled download. Returns (entries removed, downloads cancelled).
    pub fn clear(&self) -> (usize, usize) {
        self.inner.disk.as_ref().map_or((0, 0), |d| d.clear())
    }

    /// Removes expired entries now (the background sweep does this periodically).
    pub fn sweep_expired(&self) -> usize {
        self.inner.disk.as_ref().map_or(0, |d| d.sweep())
    }

    /// Keys from least to most recently used.
    pub fn keys_lru_first(&self) -> Vec<CacheKey> {
        match &self.inner.disk {
            Some(d) => d.index.lock().keys_lru_first(),
            None => Vec::new(),
        }
    }

    pub fn key_of(&self, bucket: &str, key: &str) -> CacheKey {
        CacheKey::new(bucket, key, &self.inner.cfg.profile)
    }

    pub fn contains(&self, bucket: &str, key: &str) -> bool {
        let k = self.key_of(bucket, key);
        self.inner
            .disk
            .as_ref()
            .is_some_and(|d| d.index.lock().contains(&k))
    }

    /// Where the entry's file lives (whether or not it exists).
    pub fn entry_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let k = self.key_of(bucket, key);
        self.inner.disk.as_ref().map(|d| d.layout.entry_path(&k))
    }

    /// The persisted row of an entry.
    pub fn entry_row(&self, bucket: &str, key: &str) -> Option<EntryRow> {
        let k = self.key_of(bucket, key);
        self.inner.disk.as_ref()?.db.row(&k).ok().flatten()
    }

    /// Waits until recovery after an unclean shutdown (if any) has finished.
    pub async fn wait_recovered(&self) {
        if let Some(d) = &self.inner.disk {
            let mut rx = d.recovered.clone();
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// Writes out LRU positions and marks the index cleanly closed. Dropping the last
    /// handle does the same; call this to see errors.
    pub fn close(&self) -> Result<(), CacheError> {
        self.inner.disk.as_ref().map_or(Ok(()), |d| d.close())
    }

    pub fn dir(&self) -> Option<&Path> {
        self.inner.disk.as_ref().map(|d| d.layout.dir())
    }
}

impl Inner {
    fn disk(&self) -> Result<&Arc<Disk>, CacheError> {
        self.disk
            .as_ref()
            .ok_or_else(|| CacheError::Internal("cache is off".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::time::Duration;

    fn config(dir: &Path) -> CacheConfig {
        CacheConfig {
            max_size: 1 << 20,
            max_entries: 10,
            ttl: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(3600),
            fill_concurrency: 4,
            read_timeout: Duration::from_secs(10),
            ..CacheConfig::at(dir)
        }
    }

    async fn read_all(h: &ObjectHandle) -> Vec<u8> {
        h.read(0, h.size as usize).await.expect("read").to_vec()
    }

    #[tokio::test]
    async fn transient_head_failure_serves_stale_and_404_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(MemoryStore::new());
        store.put("b", "k", "hello");
        let cache =
            Cache::open(config(dir.path()), store.clone(), Arc::new(SystemClock)).expect("open");
        let h = cache.open_object("b", "k", None).await.expect("miss");
        assert_eq!(h.outcome, Outcome::Miss);
        cache.wait_for_downloads().await;
        store.fail_heads_with(Some(StoreError::Transient("down".into())));
        let h = cache.open_object("b", "k", None).await.expect("stale");
        assert_eq!(h.outcome, Outcome::StaleHit);
        assert_eq!(read_all(&h).await, b"hello");
        assert_eq!(cache.stats().stale_served, 1);
        store.fail_heads_with(None);
        store.delete("b", "k");
        let err = cache.open_object("b", "k", None).await.expect_err("gone");
        assert!(matches!(err.store_error(), Some(StoreError::NotFound(_))));
        assert!(!cache.contains("b", "k"));
        // The handle opened before keeps its bytes.
        assert_eq!(read_all(&h).await, b"hello");
    }

    #[tokio::test]
    async fn too_large_objects_are_read_directly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(MemoryStore::new());
        store.put("b", "big", vec![7u8; 2 << 20]);
        let cache = Cache::open(config(dir.path()), store, Arc::new(SystemClock)).expect("open");
        let h = cache.open_object("b", "big", None).await.expect("open");
        assert_eq!(h.outcome, Outcome::Direct);
        assert_eq!(h.read(10, 5).await.expect("read").as_ref(), &[7u8; 5]);
        assert_eq!(cache.stats().entry_count, 0);
    }

    #[tokio::test]
    async fn disabled_cache_reads_from_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(MemoryStore::new());
        store.put("b", "k", "abc");
        let mut cfg = config(&dir.path().join("never"));
        cfg.enabled = false;
        let cache = Cache::open(cfg, store, Arc::new(SystemClock)).expect("open");
        let h = cache.open_object("b", "k", None).await.expect("open");
        assert_eq!(h.outcome, Outcome::Direct);
        assert_eq!(read_all(&h).await, b"abc");
        assert!(!dir.path().join("never").exists());
    }
}
