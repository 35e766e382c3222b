//! The read-through cache: [`Cache::open_object`] answers with a handle to a complete,
//! verified local copy of the object, to a fill under way (a miss: reads are answered as
//! their bytes land, see `fill.rs`), or to a direct-from-S3 reader when the cache is off
//! or cannot help (`direct.rs`). The cache never breaks a read.
//!
//! Ordering on disk keeps the index conservative after a crash: victims' files are
//! unlinked before the index forgets them, and a new file is renamed into place only after
//! the index has it. So a crash can leave an index row without its file (dropped on use or
//! by recovery) but never an unaccounted file under a final name.

mod clock;
mod config;
pub mod db;
mod direct;
mod fill;
mod handle;
mod index;
pub mod inspect;
mod key;
mod layout;
mod ranges;
mod stats;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{CacheConfig, CacheError};
pub use db::{DbError, EntryRow};
pub use handle::{ObjectHandle, Outcome};
pub use index::{Entry, Index, NoRoom, TooLarge};
pub use key::{CacheKey, s3_url};
pub use layout::{INDEX_FILE, LayoutError, check_dir, open_private_append};
pub use stats::{Stats, StatsSnapshot};

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use crate::store::{ObjectMeta, ObjectStore, StoreError};
use db::{BLOCK_SIZE, Batch, IndexDb};
use direct::DirectReader;
use fill::{Checksums, Fill, FillCtx, FillFailure};
use handle::{CachedFile, Source};
use layout::{Layout, Stamp};
use stats::{add, bump};

type Flight = Shared<BoxFuture<'static, Result<Arc<Fill>, Arc<CacheError>>>>;

/// The on-disk half, absent when the cache is off.
struct Disk {
    /// Before `layout`, so it is closed first: fields drop in order, and the layout holds
    /// the lock that lets the next opener in.
    db: IndexDb,
    layout: Layout,
    index: Mutex<Index>,
    /// Entries used since their LRU position was last written out.
    dirty: Mutex<HashSet<CacheKey>>,
    /// Serialises changes to files + index + db so the three agree.
    write_lock: Mutex<()>,
    /// Downloads under way: (flight id, the start of the download to await).
    flights: Mutex<HashMap<CacheKey, (u64, Flight)>>,
    next_flight: std::sync::atomic::AtomicU64,
    /// Resolves when the start's check of the disk against the index has finished.
    recovered: tokio::sync::watch::Receiver<bool>,
    /// Set by `close`: the start's check stops at the next shard, so the directory (and
    /// its lock) is free once `close` returns.
    closing: std::sync::atomic::AtomicBool,
    /// Complete downloads waiting for the next group commit (see [`COMMIT_DELAY`]).
    pending: Mutex<Vec<Pending>>,
    /// Wakes the committer when `pending` gets its first download.
    commit_due: Arc<tokio::sync::Notify>,
}

/// A complete, verified download on its way into the index.
struct Pending {
    fill: Arc<Fill>,
    sums: Checksums,
}

/// How long a complete download waits to be committed with the others that completed
/// meanwhile. Each commit costs an fsync, which on ext4 also writes back every cache file
/// written since the last one: one per download would cost a small object a third of its
/// open time. The bytes are served from the download in the meantime.
const COMMIT_DELAY: Duration = Duration::from_millis(100);

struct Inner {
    cfg: CacheConfig,
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
    disk: Option<Disk>,
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
        let disk = if cfg.enabled {
            let layout = Layout::open(&cfg.dir)?;
            let (db, loaded) = open_index(&layout)?;
            let index = Index::from_entries(cfg.max_size, cfg.max_entries, loaded.entries);
            info!(
                dir = %cfg.dir.display(),
                entries = index.len(),
                bytes = index.total_size(),
                clean = loaded.was_clean,
                "cache opened"
            );
            let (done_tx, recovered) = tokio::sync::watch::channel(false);
            let disk = Disk {
                db,
                layout,
                index: Mutex::new(index),
                dirty: Mutex::new(HashSet::new()),
                write_lock: Mutex::new(()),
                flights: Mutex::new(HashMap::new()),
                next_flight: std::sync::atomic::AtomicU64::new(1),
                recovered,
                closing: std::sync::atomic::AtomicBool::new(false),
                pending: Mutex::new(Vec::new()),
                commit_due: Arc::new(tokio::sync::Notify::new()),
            };
            Some((disk, done_tx))
        } else {
            None
        };
        let (disk, reconciled) = match disk {
            Some((disk, tx)) => (Some(disk), Some(tx)),
            None => (None, None),
        };
        let cache = Cache {
            inner: Arc::new(Inner {
                cfg,
                store,
                clock,
                stats: Arc::new(Stats::default()),
                disk,
                warned_disk: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        if let (Some(d), Some(tx)) = (&cache.inner.disk, reconciled) {
            // Over-limit after a config change (a smaller max size): trim at once.
            cache.inner.trim_to_limits();
            let weak = Arc::downgrade(&cache.inner);
            // Files the index does not know (a lost index, a crash) and rows whose file
            // is gone: found in the background at every start, so the start itself takes
            // the same time however large the cache.
            let w = weak.clone();
            tokio::task::spawn_blocking(move || {
                reconcile(&w);
                let _ = tx.send(true);
            });
            tokio::spawn(commit_loop(weak.clone(), d.commit_due.clone()));
            tokio::spawn(sweep_loop(weak, cache.inner.cfg.sweep_interval));
        }
        Ok(cache)
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
        })
    }

    /// The counters, for layers that count their own events.
    pub fn counters(&self) -> &Stats {
        &self.inner.stats
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
        let mut fresh = known.filter(|m| m.etag.is_some());
        // A fill can complete between looking in the index and joining it: look again.
        let mut stale: Option<Arc<Fill>> = None;
        for _ in 0..4 {
            if let Some(h) = self.open_cached(k, bucket, key, &mut fresh).await? {
                return Ok(h);
            }
            let joining = self
                .fill_or_join(k, bucket, key, fresh.clone(), stale.take(), true)
                .await;
            let (fill, joined) = match joining {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                // Joined a download ahead of use that found no room: this open may evict.
                Err(CacheError::NoRoom(_)) => continue,
                Err(e) => return self.cannot_fill(bucket, key, fresh, &e).await,
            };
            // A download started by someone else may be of a version replaced since.
            if joined && (inner.cfg.validate_etag || fresh.is_some()) {
                let current = match fresh.clone() {
                    Some(m) => m,
                    // A download ahead of use learned its version moments ago.
                    None if fill.ahead_of_use => ObjectMeta {
                        etag: Some(fill.etag.clone()),
                        ..ObjectMeta::default()
                    },
                    None => {
                        bump(&inner.stats.etag_validations);
                        match inner
                            .store
                            .head_within(bucket, key, inner.validate_within())
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
                };
                if current.etag.as_deref() != Some(fill.etag.as_str()) {
                    bump(&inner.stats.etag_mismatches);
                    fresh = Some(current);
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

    /// Starts downloading an object into the cache ahead of use, unless it is cached or
    /// on its way already, or there is no room for it without evicting anything (a guess
    /// must not push out what was used). `size` is what the listing said. Returns the
    /// version and size when a download started; its opens will join it.
    pub async fn prefetch(
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
            Some((fill, false)) => {
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
        fresh: &mut Option<ObjectMeta>,
    ) -> Result<Option<ObjectHandle>, CacheError> {
        let inner = &self.inner;
        let Some(disk) = &inner.disk else {
            return Ok(None);
        };
        // Two rounds at most: a cached entry can turn out stale or damaged.
        for _ in 0..2 {
            let cached = disk.index.lock().peek(&k).cloned();
            let Some(entry) = cached else { break };
            if index::is_expired(&entry, inner.clock.now_ms(), inner.ttl_ms()) {
                debug!(url = %s3_url(bucket, key), "cache entry expired");
                bump(&inner.stats.expirations);
                inner.remove_entries(&[k]);
                break;
            }
            let mut outcome = Outcome::Hit;
            if inner.cfg.validate_etag || fresh.is_some() {
                let current = match fresh.clone() {
                    Some(m) => Ok(m),
                    None => {
                        bump(&inner.stats.etag_validations);
                        inner
                            .store
                            .head_within(bucket, key, inner.validate_within())
                            .await
                    }
                };
                match current {
                    Ok(m) if m.etag.as_deref() == Some(entry.etag.as_str()) => {}
                    Ok(m) => {
                        debug!(url = %s3_url(bucket, key), "ETag changed; refetching");
                        bump(&inner.stats.etag_mismatches);
                        inner.remove_entries(&[k]);
                        *fresh = Some(m);
                        break;
                    }
                    Err(StoreError::NotFound(_)) => {
                        inner.remove_entries(&[k]);
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
            match inner.open_entry_file(&k, &entry).await {
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
        fresh: Option<ObjectMeta>,
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
        let meta = match fresh {
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

    /// Starts the download of `k`, or joins the one under way: one download per key
    /// however many callers want it. `Ok(None)` means the object landed in the index
    /// meanwhile: look there again.
    async fn fill_or_join(
        &self,
        k: CacheKey,
        bucket: &str,
        key: &str,
        meta: Option<ObjectMeta>,
        supersede: Option<Arc<Fill>>,
        may_evict: bool,
    ) -> Result<Option<(Arc<Fill>, bool)>, CacheError> {
        let Some(disk) = &self.inner.disk else {
            return Err(CacheError::Internal("cache is off".into()));
        };
        let (flight, joined) = {
            let mut flights = disk.flights.lock();
            let current = flights
                .get(&k)
                .filter(|(id, _)| supersede.as_ref().is_none_or(|s| s.flight != *id));
            if let Some((_, f)) = current {
                (f.clone(), true)
            } else {
                // A fill commits to the index before it leaves `flights`, so looking at
                // the index under this lock cannot miss a download that just finished.
                if disk.index.lock().contains(&k) {
                    return Ok(None);
                }
                let inner = self.inner.clone();
                let (bucket, key) = (bucket.to_string(), key.to_string());
                let id = disk
                    .next_flight
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A task of its own, so a caller that gives up does not cancel the others.
                let task = tokio::spawn(async move {
                    let started = inner
                        .start_fill(id, k, &bucket, &key, meta, may_evict)
                        .await;
                    if started.is_err()
                        && let Some(d) = &inner.disk
                    {
                        let mut flights = d.flights.lock();
                        if flights.get(&k).is_some_and(|(i, _)| *i == id) {
                            flights.remove(&k);
                        }
                    }
                    started.map_err(Arc::new)
                });
                let f: Flight = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(Arc::new(CacheError::Internal(format!(
                            "download task: {e}"
                        ))))
                    })
                }
                .boxed()
                .shared();
                flights.insert(k, (id, f.clone()));
                (f, false)
            }
        };
        match flight.await {
            Ok(fill) => Ok(Some((fill, joined))),
            Err(e) => Err(match &*e {
                CacheError::Store(se) => CacheError::Store(se.clone()),
                CacheError::TooLarge(t) => CacheError::TooLarge(t.clone()),
                CacheError::NoRoom(n) => CacheError::NoRoom(*n),
                CacheError::Full(n) => CacheError::Full(*n),
                other => CacheError::Internal(other.to_string()),
            }),
        }
    }

    /// Empties the cache: every entry, every other file in the shards, and the downloads
    /// under way, which are cancelled so that nothing cleared lands afterwards. Handles
    /// already open keep reading: complete files they have open (now unlinked), S3 for a
    /// cancelled download. Returns (entries removed, downloads cancelled).
    pub fn clear(&self) -> (usize, usize) {
        let inner = &self.inner;
        let Some(disk) = &inner.disk else {
            return (0, 0);
        };
        let _w = disk.write_lock.lock();
        let cancelled = inner.cancel_downloads(disk);
        let keys = disk.index.lock().keys_lru_first();
        inner.remove_entries_locked(disk, &keys);
        for shard in 0..=255u8 {
            for (_, name) in disk.layout.scan_shard(shard) {
                disk.layout.remove_in_shard(shard, &name);
            }
        }
        info!(entries = keys.len(), cancelled, "cache cleared");
        (keys.len(), cancelled)
    }

    /// Waits until no download is under way (tests and tools that want a settled cache).
    pub async fn wait_for_downloads(&self) {
        self.wait_while_any_flight(None, |_| true).await;
    }

    /// Waits, at most `limit`, for the downloads whose bytes have all landed to be verified
    /// and committed, so that at unmount a file just read to its end stays cached.
    /// Downloads still waiting for bytes from S3 are not waited for.
    pub async fn settle_landed_downloads(&self, limit: Duration) {
        self.wait_while_any_flight(
            Some(limit),
            |f| matches!(f.peek(), Some(Ok(fill)) if fill.all_landed() && fill.outcome().is_none()),
        )
        .await;
    }

    /// Polls the downloads in flight until none matches `busy`, or `limit` has passed.
    async fn wait_while_any_flight(&self, limit: Option<Duration>, busy: impl Fn(&Flight) -> bool) {
        let Some(disk) = &self.inner.disk else { return };
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        while disk.flights.lock().values().any(|(_, f)| busy(f)) {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Removes expired entries now (the background sweep does this periodically).
    pub fn sweep_expired(&self) -> usize {
        self.inner.sweep()
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
        self.inner.close()
    }

    pub fn dir(&self) -> Option<&Path> {
        self.inner.disk.as_ref().map(|d| d.layout.dir())
    }
}

/// Longest an open waits for S3 to confirm a cached copy (or a download under way) is
/// current before serving it anyway (stale-if-error).
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest `close` waits for the start's check of the disk to let go of the cache.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Inner {
    fn validate_within(&self) -> Duration {
        VALIDATE_TIMEOUT.min(self.cfg.read_timeout)
    }

    fn ttl_ms(&self) -> u64 {
        self.cfg.ttl.as_millis().min(u64::MAX as u128) as u64
    }

    fn disk(&self) -> Result<&Disk, CacheError> {
        self.disk
            .as_ref()
            .ok_or_else(|| CacheError::Internal("cache is off".into()))
    }

    /// Opens an entry's file for reading. Its checksums are checked (the whole file, on
    /// the blocking pool) on first use in this process and whenever the file was touched
    /// since its last check (another [`Stamp`]), before the file is handed out (for
    /// passthrough, the kernel then reads it without us). `None` means the entry was
    /// unusable and has been dropped.
    async fn open_entry_file(&self, k: &CacheKey, entry: &Entry) -> Option<Arc<CachedFile>> {
        let disk = self.disk.as_ref()?;
        let path = disk.layout.entry_path(k);
        let same = |e: &Entry| e.etag == entry.etag && e.created_ms == entry.created_ms;
        let dropped = |why: &str, corrupt: bool| {
            if corrupt {
                warn!(path = %path.display(), "{why}; fetching it again");
                bump(&self.stats.corruptions);
            } else {
                debug!(path = %path.display(), "{why}; fetching it again");
            }
            let _w = disk.write_lock.lock();
            // Only if it is still the entry we looked at.
            if disk.index.lock().peek(k).is_some_and(same) {
                self.remove_entries_locked(disk, &[*k]);
            }
            None
        };
        let file = match disk.layout.open_entry(k) {
            Ok(f) => f,
            // Usually an eviction that won the race with this open; else a file lost on
            // disk, or one that is not ours.
            Err(e) => return dropped(&format!("cache file unusable ({e})"), false),
        };
        // Still the entry we validated? (Evicted and fetched again meanwhile: look again.)
        if !disk.index.lock().peek(k).is_some_and(same) {
            return None;
        }
        let stamp = match Stamp::of(&file) {
            Ok(s) => s,
            Err(e) => return dropped(&format!("cache file unusable ({e})"), false),
        };
        if stamp.size != entry.size {
            return dropped("cache file has the wrong size", true);
        }
        let file = Arc::new(file);
        let blocks = std::sync::OnceLock::new();
        if entry.checked != stamp.hash64() {
            let row = disk.db.row(k).ok().flatten();
            let want = row.as_ref().map(|r| r.blocks.clone()).unwrap_or_default();
            let (f, size) = (file.clone(), entry.size);
            let sums = tokio::task::spawn_blocking(move || checksum_file(&f, size).ok())
                .await
                .ok()
                .flatten();
            let Some(sums) =
                sums.filter(|s| s.crc32 == entry.crc32 && (want.is_empty() || s.blocks == want))
            else {
                return dropped("cache file does not match its checksum", true);
            };
            if want.is_empty()
                && let Some(mut row) = row
            {
                // A row of an older version, or adopted from a file: now that the whole
                // file matched, its block checksums can be kept.
                row.blocks = sums.blocks.clone();
                let access = (entry.seq, entry.last_access_ms, entry.hits);
                let _w = disk.write_lock.lock();
                if disk.index.lock().peek(k).is_some_and(same) {
                    let _ = disk.db.apply(
                        &Batch {
                            upserts: vec![(*k, row, access)],
                            ..Batch::default()
                        },
                        false,
                    );
                }
            }
            let _ = blocks.set(sums.blocks);
            disk.index.lock().set_checked(k, stamp.hash64());
        }
        let n = blocks.get().map_or(0, Vec::len);
        Some(Arc::new(CachedFile {
            file,
            key: *k,
            created_ms: entry.created_ms,
            blocks,
            checked: Mutex::new(vec![false; n]),
            corrupt: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// A block of an open cache file did not match its checksum: the entry goes (if it
    /// is still the one the file was opened as), and the handle reads S3 from now on.
    fn corrupt_file(&self, f: &CachedFile, bucket: &str, key: &str) {
        if f.corrupt.swap(true, Ordering::Relaxed) {
            return;
        }
        bump(&self.stats.corruptions);
        warn!(url = %s3_url(bucket, key), "a block of the cache file does not match its checksum: dropping the entry; reading S3 instead");
        let Some(disk) = &self.disk else { return };
        let _w = disk.write_lock.lock();
        if disk
            .index
            .lock()
            .peek(&f.key)
            .is_some_and(|e| e.created_ms == f.created_ms)
        {
            self.remove_entries_locked(disk, &[f.key]);
        }
    }

    /// Starts a fill with one round trip: the GET of the first part also says which
    /// version and how big the object is. Makes room for it, then hands the rest of the
    /// download to a task of its own.
    async fn start_fill(
        self: &Arc<Self>,
        flight: u64,
        k: CacheKey,
        bucket: &str,
        key: &str,
        known: Option<ObjectMeta>,
        may_evict: bool,
    ) -> Result<Arc<Fill>, CacheError> {
        let disk = self.disk()?;
        let part = self.cfg.part_size.max(64 * 1024);
        let known_etag = known.as_ref().and_then(|m| m.etag.clone());
        let mut first = self
            .store
            .get_range(bucket, key, Some(0..part), known_etag.as_deref())
            .await;
        if known_etag.is_some() && matches!(first, Err(StoreError::PreconditionFailed(_))) {
            // What we knew is out of date: take whatever version is there now.
            first = self.store.get_range(bucket, key, Some(0..part), None).await;
        }
        let (etag, size, body) = match first {
            Ok(g) if !g.etag.is_empty() => (g.etag, g.object_size, Some(g.body)),
            Ok(_) => {
                // No ETag in the answer: ask for it, and pin the fill to it.
                let m = self.store.head(bucket, key).await?;
                (m.etag.unwrap_or_default(), m.size, None)
            }
            Err(StoreError::NotFound(u)) => return Err(StoreError::NotFound(u).into()),
            Err(e) => {
                // An empty object cannot be fetched by range (416): HEAD tells.
                match self.store.head(bucket, key).await {
                    Ok(m) if m.size == 0 => (m.etag.unwrap_or_default(), 0, None),
                    _ => return Err(e.into()),
                }
            }
        };
        match self.reserve_room(disk, &k, size, may_evict) {
            Err(CacheError::Full(_)) if !disk.pending.lock().is_empty() => {
                // Room held by complete downloads awaiting their group commit: commit
                // them now, so they can be evicted like any other entry.
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.commit_pending()).await;
                self.reserve_room(disk, &k, size, may_evict)?;
            }
            other => other?,
        }
        let (tmp_name, tmp) = match disk.layout.create_temp(&k) {
            Ok(t) => t,
            Err(e) => {
                disk.index.lock().unreserve(size);
                return Err(e.into());
            }
        };
        if let Err(source) = tmp.set_len(size) {
            disk.index.lock().unreserve(size);
            disk.layout.remove_temp(&tmp_name);
            return Err(CacheError::Io {
                path: disk.layout.dir().join(&tmp_name),
                source,
            });
        }
        let mut fill = Fill::new(
            flight,
            k,
            bucket,
            key,
            &etag,
            size,
            tmp,
            tmp_name,
            part,
            FillCtx {
                store: self.store.clone(),
                stats: self.stats.clone(),
            },
        );
        fill.ahead_of_use = !may_evict;
        let fill = Arc::new(fill);
        if body.is_some() {
            fill.mark_first_in_flight();
        }
        self.stats
            .downloads_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (me, f) = (self.clone(), fill.clone());
        tokio::spawn(async move {
            let result = f.run(me.cfg.fill_concurrency, body).await;
            me.finish_fill(&f, result);
        });
        Ok(fill)
    }

    /// Holds room for a download of `size` bytes, evicting what must go. When nothing
    /// must, only the index lock is taken: a commit holding the write lock through its
    /// fsync does not delay the next download. The size limit in force is the configured
    /// one or, when the disk has less room, what the disk can take.
    fn reserve_room(
        &self,
        disk: &Disk,
        k: &CacheKey,
        size: u64,
        may_evict: bool,
    ) -> Result<(), CacheError> {
        let cap = self.disk_cap(disk);
        let no_room = |e: NoRoom| match e {
            NoRoom::TooLarge(t) => CacheError::TooLarge(t),
            NoRoom::Held => CacheError::Full(size),
        };
        {
            let mut ix = disk.index.lock();
            ix.set_disk_cap(cap);
            if ix.victims_for(k, size).map_err(no_room)?.is_empty() {
                ix.reserve(size);
                return Ok(());
            }
        }
        if !may_evict {
            return Err(CacheError::NoRoom(size));
        }
        let _w = disk.write_lock.lock();
        loop {
            // Checked and reserved under one index lock: a reservation on the fast path
            // may have taken the room freed by the last round.
            let victims = {
                let mut ix = disk.index.lock();
                let victims = ix.victims_for(k, size).map_err(no_room)?;
                if victims.is_empty() {
                    ix.reserve(size);
                    return Ok(());
                }
                victims
            };
            self.remove_entries_locked(disk, &victims);
            add(&self.stats.evictions, victims.len() as u64);
        }
    }

    /// The most the cache may hold on its disk now: what it holds plus the free space,
    /// less a reserve left to everything else (5% of the filesystem, at most 1 GiB).
    /// `None` when the disk has room for the configured limit, or cannot say.
    fn disk_cap(&self, disk: &Disk) -> Option<u64> {
        let space = disk.layout.space().ok()?;
        let keep_free = (space.total / 20).min(1 << 30);
        let held = disk.index.lock().total_size();
        let cap = held.saturating_add(space.available.saturating_sub(keep_free));
        (cap < self.cfg.max_size).then_some(cap)
    }

    /// Commits a complete, verified fill to the cache, or cleans up after a failed one.
    fn finish_fill(&self, fill: &Arc<Fill>, result: Result<Checksums, FillFailure>) {
        let Some(disk) = &self.disk else { return };
        let url = s3_url(&fill.bucket, &fill.object_key);
        match result {
            Ok(sums) => {
                // The flight ends when the committer has put it in the index (or found
                // it replaced by a newer version's download, and dropped it).
                disk.pending.lock().push(Pending {
                    fill: fill.clone(),
                    sums,
                });
                disk.commit_due.notify_one();
                return;
            }
            Err(f) => {
                // Closes the download's file for every handle of it, and unlinks it, so
                // its space comes back now; then its room in the limits. Handles of it
                // read S3 from here on.
                fill.finish(Err(f.clone()));
                disk.layout.remove_temp(&fill.tmp_name);
                disk.index.lock().unreserve(fill.size);
                match &f {
                    FillFailure::Failed(why) => {
                        bump(&self.stats.downloads_failed);
                        warn!(%url, %why, "download failed; reads go to S3 directly");
                    }
                    FillFailure::NoSpace(why) => {
                        bump(&self.stats.disk_full_events);
                        bump(&self.stats.not_kept);
                        let free = disk.layout.space().map_or(0, |s| s.available);
                        warn!(
                            %url, %why, dir = %disk.layout.dir().display(), free_bytes = free,
                            "cache disk full: this download is dropped and read from S3; the \
                             cache now keeps within the disk's free space"
                        );
                        // Other files took the room: keep within what the disk has now.
                        self.trim_to_limits();
                    }
                    FillFailure::Changed | FillFailure::Cancelled => {}
                }
            }
        }
        self.end_flight(disk, fill);
    }

    /// Ends a download's flight: later opens find its entry (or fetch anew).
    fn end_flight(&self, disk: &Disk, fill: &Fill) {
        {
            // Checked and removed under one lock: a newer version's download may take
            // the key's place at any moment.
            let mut flights = disk.flights.lock();
            if flights
                .get(&fill.key)
                .is_some_and(|(id, _)| *id == fill.flight)
            {
                flights.remove(&fill.key);
            }
        }
        // Last: "no download in flight" then means committed and visible to opens.
        self.stats
            .downloads_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Puts every complete download waiting in `pending` into the cache with one durable
    /// index commit, then ends their flights.
    fn commit_pending(&self) {
        let Some(disk) = &self.disk else { return };
        let batch = std::mem::take(&mut *disk.pending.lock());
        if batch.is_empty() {
            return;
        }
        let results = self.commit_inserts(disk, &batch);
        for (p, r) in batch.iter().zip(results) {
            let url = s3_url(&p.fill.bucket, &p.fill.object_key);
            match r {
                Ok(true) => debug!(%url, size = p.fill.size, "download complete and cached"),
                Ok(false) => debug!(%url, "download of a replaced version finished; not kept"),
                // Every byte is there for the handles already open; it is just not kept.
                Err(e) => warn!(%url, error = %e, "could not keep the download in the cache"),
            }
            p.fill.finish(Ok(()));
            self.end_flight(disk, &p.fill);
        }
    }

    /// The index, db and file half of [`Inner::commit_pending`]: `Ok(false)` for a
    /// download replaced by a newer version meanwhile, which must not overwrite its entry.
    ///
    /// Each download's room stays reserved until its entry takes it over (under one index
    /// lock), so a download reserving meanwhile cannot count it as free. Files go before
    /// their room is given back: the disk never holds more than the limits.
    fn commit_inserts(&self, disk: &Disk, batch: &[Pending]) -> Vec<Result<bool, CacheError>> {
        let _w = disk.write_lock.lock();
        let now = self.clock.now_ms();
        let drop_download = |p: &Pending| {
            disk.layout.remove_temp(&p.fill.tmp_name);
            disk.index.lock().unreserve(p.fill.size);
        };
        let mut results: Vec<Result<bool, CacheError>> = Vec::with_capacity(batch.len());
        let mut db_batch = Batch::default();
        for p in batch {
            let f = &p.fill;
            // A download replaced by one of a newer version must not overwrite its entry.
            let current = disk
                .flights
                .lock()
                .get(&f.key)
                .is_some_and(|(id, _)| *id == f.flight);
            if !current {
                drop_download(p);
                results.push(Ok(false));
                continue;
            }
            let victims = {
                let mut ix = disk.index.lock();
                ix.unreserve(f.size);
                let victims = ix.victims_for(&f.key, f.size);
                ix.reserve(f.size);
                match victims {
                    Ok(v) => v,
                    Err(e) => {
                        drop(ix);
                        drop_download(p);
                        bump(&self.stats.not_kept);
                        results.push(Err(match e {
                            NoRoom::TooLarge(t) => CacheError::TooLarge(t),
                            NoRoom::Held => CacheError::Full(f.size),
                        }));
                        continue;
                    }
                }
            };
            for v in &victims {
                let _ = disk.layout.remove_entry(v);
            }
            {
                let mut ix = disk.index.lock();
                for v in &victims {
                    ix.remove(v);
                }
            }
            add(&self.stats.evictions, victims.len() as u64);
            db_batch.removes.extend(victims);
            let seq = disk.index.lock().next_seq() + db_batch.upserts.len() as u64;
            let mut row = EntryRow {
                url: s3_url(&f.bucket, &f.object_key),
                profile: self.cfg.profile.clone(),
                etag: f.etag.clone(),
                size: f.size,
                created_ms: now,
                crc32: p.sums.crc32,
                blocks: Vec::new(),
            };
            // The file carries its row (without the block checksums, which may not fit
            // in an extended attribute), so a lost index can be rebuilt from the files.
            if let (Some(file), Ok(json)) = (f.file(), serde_json::to_vec(&row)) {
                disk.layout.write_row(&file, &json);
            }
            row.blocks = p.sums.blocks.clone();
            db_batch.upserts.push((f.key, row, (seq, now, 0)));
            results.push(Ok(true));
        }
        if let Err(e) = disk.db.apply(&db_batch, true) {
            let e = CacheError::from(e);
            for (p, r) in batch.iter().zip(results.iter_mut()) {
                if matches!(r, Ok(true)) {
                    drop_download(p);
                    bump(&self.stats.not_kept);
                    *r = Err(CacheError::Internal(e.to_string()));
                }
            }
            return results;
        }
        for (p, r) in batch.iter().zip(results.iter_mut()) {
            if !matches!(r, Ok(true)) {
                continue;
            }
            let f = &p.fill;
            if let Err(source) = disk.layout.commit_temp(&f.tmp_name, &f.key) {
                let _ = disk.db.apply(
                    &Batch {
                        removes: vec![f.key],
                        ..Batch::default()
                    },
                    true,
                );
                drop_download(p);
                bump(&self.stats.not_kept);
                *r = Err(CacheError::Io {
                    path: disk.layout.entry_path(&f.key),
                    source,
                });
                continue;
            }
            // Checked as it landed; its stamp after the rename says whether it was
            // touched since.
            let checked = f
                .file()
                .and_then(|file| Stamp::of(&file).ok())
                .map_or(0, |s| s.hash64());
            // Only now may an open find it: the file is in place.
            let entry = Entry {
                etag: f.etag.clone(),
                size: f.size,
                created_ms: now,
                last_access_ms: now,
                seq: 0,
                hits: 0,
                crc32: p.sums.crc32,
                checked,
            };
            {
                let mut ix = disk.index.lock();
                ix.unreserve(f.size);
                ix.insert(f.key, entry);
            }
            disk.dirty.lock().insert(f.key);
        }
        results
    }

    /// Forgets entries and deletes their files (files first: see the module comment).
    fn remove_entries(&self, keys: &[CacheKey]) {
        let Some(disk) = &self.disk else { return };
        if keys.is_empty() {
            return;
        }
        let _w = disk.write_lock.lock();
        self.remove_entries_locked(disk, keys);
    }

    /// [`Inner::remove_entries`] for a caller already holding the write lock.
    fn remove_entries_locked(&self, disk: &Disk, keys: &[CacheKey]) {
        if keys.is_empty() {
            return;
        }
        for k in keys {
            let _ = disk.layout.remove_entry(k);
        }
        {
            let mut ix = disk.index.lock();
            for k in keys {
                ix.remove(k);
            }
        }
        let batch = Batch {
            removes: keys.to_vec(),
            ..Batch::default()
        };
        if let Err(e) = disk.db.apply(&batch, true) {
            // The files are gone: the rows are dropped at the next start's check.
            warn!(error = %e, "could not record removal in the cache index");
        }
    }

    fn sweep(&self) -> usize {
        let Some(disk) = &self.disk else { return 0 };
        let expired = disk
            .index
            .lock()
            .expired(self.clock.now_ms(), self.ttl_ms());
        if !expired.is_empty() {
            debug!(count = expired.len(), "removing expired cache entries");
            add(&self.stats.expirations, expired.len() as u64);
            self.remove_entries(&expired);
        }
        expired.len()
    }

    /// Evicts least recently used entries until the cache is within its limits, the size
    /// limit being the configured one or what the disk can take now, if less.
    fn trim_to_limits(&self) {
        let Some(disk) = &self.disk else { return };
        let cap = self.disk_cap(disk);
        let victims = {
            let mut ix = disk.index.lock();
            ix.set_disk_cap(cap);
            let limit = ix.size_limit();
            if ix.total_size() <= limit && ix.len() <= ix.max_entries() {
                return;
            }
            let mut bytes = ix.total_size();
            let mut count = ix.len();
            let mut v = Vec::new();
            for k in ix.keys_lru_first() {
                if bytes <= limit && count <= ix.max_entries() {
                    break;
                }
                if let Some(e) = ix.peek(&k) {
                    bytes -= e.size;
                    count -= 1;
                    v.push(k);
                }
            }
            v
        };
        add(&self.stats.evictions, victims.len() as u64);
        self.remove_entries(&victims);
    }

    fn flush_touches(&self, durable: bool) -> Result<(), CacheError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let keys: Vec<CacheKey> = disk.dirty.lock().drain().collect();
        let touches = {
            let ix = disk.index.lock();
            keys.iter()
                .filter_map(|k| ix.peek(k).map(|e| (*k, (e.seq, e.last_access_ms, e.hits))))
                .collect()
        };
        let batch = Batch {
            touches,
            ..Batch::default()
        };
        let _w = disk.write_lock.lock();
        disk.db.apply(&batch, durable)?;
        Ok(())
    }

    /// One shard of [`reconcile`]: what it adopted (with when each was last used), how
    /// many files it removed and how many rows it dropped. `known` are the keys of this
    /// shard the index held when the check began.
    fn reconcile_shard(
        &self,
        shard: u8,
        known: &[CacheKey],
    ) -> (Vec<(CacheKey, u64)>, usize, usize) {
        let (mut adopted, mut removed, mut dropped) = (Vec::new(), 0usize, 0usize);
        let Some(disk) = &self.disk else {
            return (adopted, removed, dropped);
        };
        {
            let names = disk.layout.scan_shard(shard);
            let _w = disk.write_lock.lock();
            let mut batch = Batch::default();
            let mut present = HashSet::new();
            for (key, name) in names {
                let Some(k) = key else {
                    disk.layout.remove_in_shard(shard, &name);
                    removed += 1;
                    continue;
                };
                present.insert(k);
                if disk.index.lock().contains(&k) || disk.flights.lock().contains_key(&k) {
                    continue;
                }
                match self.adoptable(disk, &k) {
                    Some((row, entry)) => {
                        let access = (entry.seq, entry.last_access_ms, 0);
                        adopted.push((k, entry.last_access_ms));
                        let mut ix = disk.index.lock();
                        ix.insert(k, entry);
                        ix.demote(&k);
                        batch.upserts.push((k, row, access));
                    }
                    None => {
                        let _ = disk.layout.remove_entry(&k);
                        removed += 1;
                    }
                }
            }
            {
                let mut ix = disk.index.lock();
                for k in known {
                    if !present.contains(k) && ix.remove(k).is_some() {
                        batch.removes.push(*k);
                        dropped += 1;
                    }
                }
            }
            if let Err(e) = disk.db.apply(&batch, false) {
                warn!(error = %e, "recording the cache check in the index");
            }
        }
        (adopted, removed, dropped)
    }

    /// The row and entry of a file the index does not know, from the row it carries, if
    /// that row is one of ours for this very file.
    fn adoptable(&self, disk: &Disk, k: &CacheKey) -> Option<(EntryRow, Entry)> {
        let (json, stamp) = disk.layout.read_row(k)?;
        let row: EntryRow = serde_json::from_slice(&json).ok()?;
        if CacheKey::from_url(&row.url, &row.profile) != *k || row.size != stamp.size {
            return None;
        }
        let used_ms = (stamp.mtime_ns / 1_000_000).max(0) as u64;
        let entry = Entry {
            etag: row.etag.clone(),
            size: row.size,
            created_ms: row.created_ms,
            last_access_ms: used_ms,
            seq: 0,
            hits: 0,
            crc32: row.crc32,
            checked: 0,
        };
        Some((row, entry))
    }

    /// Ends every download under way: each one's flight ends now, so its eventual
    /// commit finds itself replaced and drops it, and one that has started stops fetching
    /// and closes and removes its file (its handles read S3 from here on).
    fn cancel_downloads(&self, disk: &Disk) -> usize {
        let flights: Vec<Flight> = disk.flights.lock().drain().map(|(_, (_, f))| f).collect();
        for f in &flights {
            if let Some(Ok(fill)) = f.peek() {
                fill.finish(Err(FillFailure::Cancelled));
                disk.layout.remove_temp(&fill.tmp_name);
            }
        }
        flights.len()
    }

    fn close(&self) -> Result<(), CacheError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        // The check of the disk may hold the cache for one shard more: wait for it, so
        // the directory is free for the next user when this returns.
        disk.closing.store(true, Ordering::SeqCst);
        let waiting = std::time::Instant::now();
        let rx = &disk.recovered;
        while !*rx.borrow() && rx.has_changed().is_ok() && waiting.elapsed() < CLOSE_WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.commit_pending();
        // Downloads still waiting for bytes are dropped: their files go now, not at the
        // next start.
        self.cancel_downloads(disk);
        self.flush_touches(true)?;
        disk.db.set_meta("clean", 1)?;
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            warn!(error = %e, "closing the cache index");
        }
    }
}

/// Checks the disk against the index, at every start, in the background: a file the
/// index does not know is adopted when it carries its row (the index was lost or set
/// aside) and is removed otherwise; a row whose file is gone is dropped; then the limits
/// are enforced. Adopted entries come last in LRU order and are checked against their
/// checksum on first use, like every entry after a restart. Holds the cache only one
/// shard at a time, so closing it is never held up.
fn reconcile(cache: &Weak<Inner>) {
    let started = std::time::Instant::now();
    let mut by_shard: Vec<Vec<CacheKey>> = vec![Vec::new(); 256];
    {
        let Some(inner) = cache.upgrade() else { return };
        let Some(disk) = &inner.disk else { return };
        for (k, _) in disk.index.lock().iter() {
            by_shard[k.0[0] as usize].push(*k);
        }
    }
    let (mut adopted, mut removed, mut dropped) = (Vec::new(), 0usize, 0usize);
    for shard in 0..=255u8 {
        let Some(inner) = cache.upgrade() else { return };
        if inner
            .disk
            .as_ref()
            .is_none_or(|d| d.closing.load(Ordering::SeqCst))
        {
            return;
        }
        let (a, r, d) = inner.reconcile_shard(shard, &by_shard[shard as usize]);
        adopted.extend(a);
        removed += r;
        dropped += d;
    }
    let Some(inner) = cache.upgrade() else { return };
    let Some(disk) = &inner.disk else { return };
    // Oldest use last.
    adopted.sort_by_key(|(_, used)| std::cmp::Reverse(*used));
    {
        let mut ix = disk.index.lock();
        for (k, _) in &adopted {
            ix.demote(k);
        }
    }
    // Written durably with the LRU positions below.
    disk.dirty.lock().extend(adopted.iter().map(|(k, _)| *k));
    inner.trim_to_limits();
    if let Err(e) = inner.flush_touches(true) {
        warn!(error = %e, "recording the cache check in the index");
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if !adopted.is_empty() || removed > 0 || dropped > 0 {
        info!(
            adopted = adopted.len(),
            removed,
            rows_dropped = dropped,
            elapsed_ms,
            "cache checked against the disk"
        );
    } else {
        debug!(
            elapsed_ms,
            "cache checked against the disk: index and files agree"
        );
    }
}

/// Opens the index; one that cannot be read (truncated, damaged) is set aside and a new
/// one started, which the background check then fills from the files on disk. An index
/// of a newer version is left alone: the cache cannot be used.
fn open_index(layout: &Layout) -> Result<(IndexDb, db::Loaded), CacheError> {
    let path = layout.index_path()?;
    match IndexDb::open(&path) {
        Ok(opened) => Ok(opened),
        Err(e) if e.kind != db::DbErrorKind::Broken => Err(e.into()),
        Err(e) => {
            let aside = layout.set_index_aside()?;
            warn!(
                error = %e, moved_to = %aside.display(),
                "cache index unreadable: set aside; rebuilding it from the cached files"
            );
            Ok(IndexDb::open(&path)?)
        }
    }
}

async fn commit_loop(inner: Weak<Inner>, due: Arc<tokio::sync::Notify>) {
    loop {
        due.notified().await;
        tokio::time::sleep(COMMIT_DELAY).await;
        let Some(inner) = inner.upgrade() else { return };
        // An fsync: off the runtime's worker threads.
        let _ = tokio::task::spawn_blocking(move || inner.commit_pending()).await;
    }
}

async fn sweep_loop(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.sweep();
        if let Err(e) = inner.flush_touches(false) {
            warn!(error = %e, "writing LRU positions");
        }
    }
}

fn checksum_file(file: &File, size: u64) -> io::Result<Checksums> {
    let mut sums = fill::ChecksumBuilder::default();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let mut off = 0u64;
    loop {
        let n = file.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        sums.update(&buf[..n]);
        off += n as u64;
    }
    if off != size {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "size changed"));
    }
    Ok(sums.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn config(dir: &Path) -> CacheConfig {
        CacheConfig {
            enabled: true,
            dir: dir.to_path_buf(),
            max_size: 1 << 20,
            max_entries: 10,
            ttl: Duration::from_secs(3600),
            validate_etag: true,
            profile: "default".into(),
            sweep_interval: Duration::from_secs(3600),
            part_size: CacheConfig::DEFAULT_PART_SIZE,
            fill_concurrency: 4,
            read_timeout: Duration::from_secs(10),
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
