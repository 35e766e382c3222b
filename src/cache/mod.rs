//! The read-through cache: [`Cache::open_object`] answers with a handle to a complete,
//! verified local copy of the object (fetching it on a miss), or with a direct-from-S3
//! handle when the cache is off or cannot help. The cache never breaks a read.
//!
//! Ordering on disk keeps the index conservative after a crash: victims' files are
//! unlinked before the index forgets them, and a new file is renamed into place only after
//! the index has it. So a crash can leave an index row without its file (dropped on use or
//! by recovery) but never an unaccounted file under a final name.

mod clock;
pub mod db;
mod index;
pub mod inspect;
mod key;
mod layout;
mod stats;

pub use clock::{Clock, ManualClock, SystemClock};
pub use db::{DbError, EntryRow};
pub use index::{Entry, Index, TooLarge};
pub use key::{CacheKey, s3_url};
pub use layout::LayoutError;
pub use stats::{Stats, StatsSnapshot};

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use md5::{Digest, Md5};
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use crate::store::{ObjectMeta, ObjectStore, StoreError};
use db::{Batch, IndexDb};
use layout::Layout;
use stats::{add, bump};

/// Counts an error seen by a layer above the cache (a failed open or read).
pub fn bump_errors(cache: &Cache) {
    bump(&cache.inner.stats.errors);
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    /// Bytes.
    pub max_size: u64,
    pub max_entries: u64,
    pub ttl: Duration,
    /// HEAD on open to compare ETags; off trusts the cached copy until the TTL.
    pub validate_etag: bool,
    /// The AWS profile name, part of the cache key.
    pub profile: String,
    /// How often expired entries are removed and LRU positions written out.
    pub sweep_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("download of {url} failed verification: {why}")]
    Verify { url: String, why: String },
    #[error("{0}")]
    Internal(String),
}

impl CacheError {
    /// The store error behind this one, if the object store is what failed.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            CacheError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// An open object: either a local file holding exactly the version `etag`, or a direct
/// line to S3 (cache off, object too large, cache unusable).
#[derive(Clone)]
pub struct ObjectHandle {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    /// How the open was answered, for logs and tests.
    pub outcome: Outcome,
    source: Source,
    inner: Arc<Inner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// Served from the cache because validation failed for a transient reason.
    StaleHit,
    Miss,
    /// Not cached: reads go to S3.
    Direct,
}

#[derive(Clone)]
enum Source {
    /// Already unlinked files keep working: an evicted or replaced entry's open handles
    /// go on reading the bytes they opened.
    File(Arc<File>),
    Direct,
}

impl std::fmt::Debug for ObjectHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectHandle")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .field("etag", &self.etag)
            .field("size", &self.size)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl ObjectHandle {
    /// The cache file, when this handle reads from one.
    pub fn file(&self) -> Option<&Arc<File>> {
        match &self.source {
            Source::File(f) => Some(f),
            Source::Direct => None,
        }
    }

    /// Reads up to `len` bytes at `offset` (fewer only at the end of the object).
    pub async fn read(&self, offset: u64, len: usize) -> Result<Bytes, CacheError> {
        let end = self.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Bytes::new());
        }
        match &self.source {
            Source::File(_) => self.read_cached(offset, len),
            Source::Direct => {
                let got = self
                    .inner
                    .store
                    .get_range(&self.bucket, &self.key, Some(offset..end), Some(&self.etag))
                    .await?;
                let mut buf = Vec::with_capacity((end - offset) as usize);
                let mut body = got.body;
                while let Some(chunk) = body.next().await {
                    buf.extend_from_slice(&chunk?);
                }
                add(&self.inner.stats.bytes_from_s3, buf.len() as u64);
                Ok(Bytes::from(buf))
            }
        }
    }

    /// Reads from the cache file without leaving the calling thread (a `pread`). Direct
    /// handles must use [`ObjectHandle::read`].
    pub fn read_cached(&self, offset: u64, len: usize) -> Result<Bytes, CacheError> {
        let Source::File(file) = &self.source else {
            return Err(CacheError::Internal("not a cached handle".into()));
        };
        let end = self.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Bytes::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    bump(&self.inner.stats.errors);
                    return Err(CacheError::Io {
                        path: PathBuf::from(s3_url(&self.bucket, &self.key)),
                        source,
                    });
                }
            }
        }
        buf.truncate(done);
        add(&self.inner.stats.bytes_from_cache, done as u64);
        Ok(Bytes::from(buf))
    }
}

#[derive(Clone)]
struct Filled {
    file: Arc<File>,
    etag: String,
    size: u64,
}

type Flight = Shared<BoxFuture<'static, Result<Filled, Arc<CacheError>>>>;

/// The on-disk half, absent when the cache is off.
struct Disk {
    layout: Layout,
    db: IndexDb,
    index: Mutex<Index>,
    /// Entries used since their LRU position was last written out.
    dirty: Mutex<HashSet<CacheKey>>,
    /// Serialises changes to files + index + db so the three agree.
    write_lock: Mutex<()>,
    flights: Mutex<HashMap<CacheKey, Flight>>,
    /// Resolves when recovery after an unclean shutdown has finished.
    recovered: tokio::sync::watch::Receiver<bool>,
}

struct Inner {
    cfg: CacheConfig,
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    stats: Stats,
    disk: Option<Disk>,
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
    /// periodic sweep and crash recovery run as tasks on it.
    pub fn open(
        cfg: CacheConfig,
        store: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Cache, CacheError> {
        let disk = if cfg.enabled {
            let layout = Layout::open(&cfg.dir)?;
            let (db, loaded) = IndexDb::open(&layout.index_path())?;
            let index = Index::from_entries(cfg.max_size, cfg.max_entries, loaded.entries);
            info!(
                dir = %cfg.dir.display(),
                entries = index.len(),
                bytes = index.total_size(),
                clean = loaded.was_clean,
                "cache opened"
            );
            let (done_tx, recovered) = tokio::sync::watch::channel(loaded.was_clean);
            let disk = Disk {
                layout,
                db,
                index: Mutex::new(index),
                dirty: Mutex::new(HashSet::new()),
                write_lock: Mutex::new(()),
                flights: Mutex::new(HashMap::new()),
                recovered,
            };
            Some((disk, loaded.was_clean, done_tx))
        } else {
            None
        };
        let (disk, recovery) = match disk {
            Some((disk, clean, tx)) => (Some(disk), (!clean).then_some(tx)),
            None => (None, None),
        };
        let cache = Cache {
            inner: Arc::new(Inner {
                cfg,
                store,
                clock,
                stats: Stats::default(),
                disk,
            }),
        };
        if cache.inner.disk.is_some() {
            // Over-limit after a config change (a smaller max size): trim at once.
            cache.inner.trim_to_limits();
            let weak = Arc::downgrade(&cache.inner);
            if let Some(tx) = recovery {
                let w = weak.clone();
                tokio::task::spawn_blocking(move || {
                    if let Some(inner) = w.upgrade() {
                        inner.recover();
                    }
                    let _ = tx.send(true);
                });
            }
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
        self.inner.stats.snapshot(
            self.enabled(),
            count,
            size,
            self.inner.cfg.max_size,
            self.inner.cfg.max_entries,
        )
    }

    /// The counters, for layers that count their own events (errors seen by the mount).
    pub fn counters(&self) -> &Stats {
        &self.inner.stats
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
        let Some(disk) = &inner.disk else {
            bump(&inner.stats.misses);
            let meta = match known.filter(|m| m.etag.is_some()) {
                Some(m) => m,
                None => inner.store.head(bucket, key).await?,
            };
            return Ok(self.direct(bucket, key, &meta));
        };
        let k = CacheKey::new(bucket, key, &inner.cfg.profile);
        let mut fresh = known.filter(|m| m.etag.is_some());
        // Two rounds at most: a cached entry can turn out stale or damaged, then we fetch.
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
                        inner.store.head(bucket, key).await
                    }
                };
                match current {
                    Ok(m) if m.etag.as_deref() == Some(entry.etag.as_str()) => {}
                    Ok(m) => {
                        debug!(url = %s3_url(bucket, key), "ETag changed; refetching");
                        bump(&inner.stats.etag_mismatches);
                        inner.remove_entries(&[k]);
                        fresh = Some(m);
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
                    return Ok(ObjectHandle {
                        bucket: bucket.to_string(),
                        key: key.to_string(),
                        etag: entry.etag,
                        size: entry.size,
                        outcome,
                        source: Source::File(file),
                        inner: inner.clone(),
                    });
                }
                None => continue,
            }
        }
        bump(&inner.stats.misses);
        match self.fill_shared(k, bucket, key, fresh.clone()).await {
            Ok(filled) => Ok(ObjectHandle {
                bucket: bucket.to_string(),
                key: key.to_string(),
                etag: filled.etag,
                size: filled.size,
                outcome: Outcome::Miss,
                source: Source::File(filled.file),
                inner: inner.clone(),
            }),
            Err(e) => match &*e {
                CacheError::Store(se) => Err(CacheError::Store(se.clone())),
                CacheError::Verify { .. } => Err(CacheError::Internal(e.to_string())),
                other => {
                    // Too large, disk full, unwritable: read from S3 instead.
                    if !matches!(other, CacheError::TooLarge(_)) {
                        warn!(url = %s3_url(bucket, key), error = %other, "cache cannot store this object; reading from S3");
                    }
                    let meta = match fresh {
                        Some(m) => m,
                        None => inner.store.head(bucket, key).await?,
                    };
                    Ok(self.direct(bucket, key, &meta))
                }
            },
        }
    }

    /// Opens the object for reading straight from S3, bypassing the cache (`O_DIRECT`).
    pub async fn open_uncached(&self, bucket: &str, key: &str) -> Result<ObjectHandle, CacheError> {
        let meta = self.inner.store.head(bucket, key).await?;
        Ok(self.direct(bucket, key, &meta))
    }

    fn direct(&self, bucket: &str, key: &str, meta: &ObjectMeta) -> ObjectHandle {
        ObjectHandle {
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: meta.etag.clone().unwrap_or_default(),
            size: meta.size,
            outcome: Outcome::Direct,
            source: Source::Direct,
            inner: self.inner.clone(),
        }
    }

    /// One download per key however many callers want it.
    async fn fill_shared(
        &self,
        k: CacheKey,
        bucket: &str,
        key: &str,
        meta: Option<ObjectMeta>,
    ) -> Result<Filled, Arc<CacheError>> {
        let Some(disk) = &self.inner.disk else {
            return Err(Arc::new(CacheError::Internal("cache is off".into())));
        };
        let flight = {
            let mut flights = disk.flights.lock();
            if let Some(f) = flights.get(&k) {
                f.clone()
            } else {
                let inner = self.inner.clone();
                let (bucket, key) = (bucket.to_string(), key.to_string());
                // A task of its own, so a caller that gives up does not cancel the others.
                let task = tokio::spawn(async move {
                    let result = inner.fill(k, &bucket, &key, meta).await;
                    if let Some(d) = &inner.disk {
                        d.flights.lock().remove(&k);
                    }
                    result.map_err(Arc::new)
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
                flights.insert(k, f.clone());
                f
            }
        };
        flight.await
    }

    /// Empties the cache. Handles already open keep reading their (now unlinked) files;
    /// downloads under way still land afterwards. Returns the number of entries removed.
    pub fn clear(&self) -> usize {
        let Some(disk) = &self.inner.disk else { return 0 };
        let keys = disk.index.lock().keys_lru_first();
        self.inner.remove_entries(&keys);
        info!(entries = keys.len(), "cache cleared");
        keys.len()
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

impl Inner {
    fn ttl_ms(&self) -> u64 {
        self.cfg.ttl.as_millis().min(u64::MAX as u128) as u64
    }

    fn disk(&self) -> Result<&Disk, CacheError> {
        self.disk
            .as_ref()
            .ok_or_else(|| CacheError::Internal("cache is off".into()))
    }

    /// Opens an entry's file, checking its bytes once per process. `None` means the entry
    /// was unusable and has been dropped.
    async fn open_entry_file(&self, k: &CacheKey, entry: &Entry) -> Option<Arc<File>> {
        let disk = self.disk.as_ref()?;
        let path = disk.layout.entry_path(k);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cache file missing; refetching");
                self.remove_entries(&[*k]);
                return None;
            }
        };
        let file = Arc::new(file);
        if !entry.verified {
            let (f, size, want) = (file.clone(), entry.size, entry.crc32);
            let ok =
                tokio::task::spawn_blocking(move || checksum_file(&f, size).ok() == Some(want))
                    .await
                    .unwrap_or(false);
            if !ok {
                warn!(path = %path.display(), "cache file does not match its checksum; refetching");
                bump(&self.stats.corruptions);
                self.remove_entries(&[*k]);
                return None;
            }
            disk.index.lock().set_verified(k);
        }
        Some(file)
    }

    /// Downloads the object into a temporary file, verifies it and moves it into place.
    async fn fill(
        &self,
        k: CacheKey,
        bucket: &str,
        key: &str,
        meta: Option<ObjectMeta>,
    ) -> Result<Filled, CacheError> {
        let disk = self.disk()?;
        let url = s3_url(bucket, key);
        self.stats
            .downloads_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _in_flight = InFlightGuard(&self.stats);
        let meta = match meta {
            Some(m) => m,
            None => self.store.head(bucket, key).await?,
        };
        let etag = meta.etag.clone().unwrap_or_default();
        // Refuse early what can never fit.
        disk.index.lock().victims_for(&k, meta.size)?;

        let (tmp_path, mut tmp) = disk.layout.create_temp(&k)?;
        let cleanup = TempGuard(Some(tmp_path.clone()));
        let mut crc = crc32fast::Hasher::new();
        let mut md5 = plain_md5(&etag).map(|want| (Md5::new(), want));
        let mut written: u64 = 0;
        if meta.size > 0 {
            let got = self
                .store
                .get_range(
                    bucket,
                    key,
                    None,
                    (!etag.is_empty()).then_some(etag.as_str()),
                )
                .await?;
            if !etag.is_empty() && !got.etag.is_empty() && got.etag != etag {
                return Err(StoreError::PreconditionFailed(url).into());
            }
            let mut body = got.body;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                tmp.write_all(&chunk).map_err(|source| CacheError::Io {
                    path: tmp_path.clone(),
                    source,
                })?;
                crc.update(&chunk);
                if let Some((h, _)) = &mut md5 {
                    h.update(&chunk);
                }
                written += chunk.len() as u64;
                add(&self.stats.bytes_from_s3, chunk.len() as u64);
            }
        }
        if written != meta.size {
            return Err(CacheError::Verify {
                url,
                why: format!("got {written} bytes, expected {}", meta.size),
            });
        }
        if let Some((h, want)) = md5 {
            let got = hex::encode(h.finalize());
            if got != want {
                return Err(CacheError::Verify {
                    url,
                    why: format!("MD5 {got} does not match ETag {want}"),
                });
            }
        }
        let now = self.clock.now_ms();
        let entry = Entry {
            etag: etag.clone(),
            size: meta.size,
            created_ms: now,
            last_access_ms: now,
            seq: 0,
            hits: 0,
            crc32: crc.finalize(),
            verified: true,
        };
        let row = EntryRow {
            url,
            profile: self.cfg.profile.clone(),
            etag: etag.clone(),
            size: meta.size,
            created_ms: now,
            crc32: entry.crc32,
        };
        self.commit_insert(k, entry, row, &tmp_path)?;
        cleanup.disarm();
        Ok(Filled {
            file: Arc::new(tmp),
            etag,
            size: meta.size,
        })
    }

    /// Makes room, records the entry and renames its file into place, in the order that
    /// keeps a crash harmless (see the module comment).
    fn commit_insert(
        &self,
        k: CacheKey,
        entry: Entry,
        row: EntryRow,
        tmp_path: &Path,
    ) -> Result<(), CacheError> {
        let disk = self.disk()?;
        let _w = disk.write_lock.lock();
        let victims = disk.index.lock().victims_for(&k, entry.size)?;
        for v in &victims {
            let _ = std::fs::remove_file(disk.layout.entry_path(v));
        }
        let mut batch = Batch {
            removes: victims.clone(),
            ..Batch::default()
        };
        {
            let mut ix = disk.index.lock();
            for v in &victims {
                ix.remove(v);
            }
            let e = ix.insert(k, entry);
            batch
                .upserts
                .push((k, row, (e.seq, e.last_access_ms, e.hits)));
        }
        add(&self.stats.evictions, victims.len() as u64);
        if let Err(e) = disk.db.apply(&batch, true) {
            disk.index.lock().remove(&k);
            return Err(e.into());
        }
        let dest = disk.layout.entry_path(&k);
        if let Err(source) = std::fs::rename(tmp_path, &dest) {
            disk.index.lock().remove(&k);
            let _ = disk.db.apply(
                &Batch {
                    removes: vec![k],
                    ..Batch::default()
                },
                true,
            );
            return Err(CacheError::Io { path: dest, source });
        }
        Ok(())
    }

    /// Forgets entries and deletes their files (files first: see the module comment).
    fn remove_entries(&self, keys: &[CacheKey]) {
        let Some(disk) = &self.disk else { return };
        if keys.is_empty() {
            return;
        }
        let _w = disk.write_lock.lock();
        for k in keys {
            let _ = std::fs::remove_file(disk.layout.entry_path(k));
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
            bump(&self.stats.errors);
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

    fn trim_to_limits(&self) {
        let Some(disk) = &self.disk else { return };
        let victims = {
            let ix = disk.index.lock();
            if ix.total_size() <= ix.max_size() && ix.len() <= ix.max_entries() {
                return;
            }
            let mut bytes = ix.total_size();
            let mut count = ix.len();
            let mut v = Vec::new();
            for k in ix.keys_lru_first() {
                if bytes <= ix.max_size() && count <= ix.max_entries() {
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

    /// After an unclean shutdown: drop index rows whose file is gone and delete files the
    /// index does not know. Runs in the background; the cache is usable meanwhile.
    fn recover(&self) {
        let Some(disk) = &self.disk else { return };
        let started = std::time::Instant::now();
        let (mut orphans, mut missing) = (0usize, Vec::new());
        for shard in 0..=255u8 {
            let files = disk.layout.scan_shard(shard);
            let _w = disk.write_lock.lock();
            let ix = disk.index.lock();
            for (key, path) in files {
                if key.is_none_or(|k| !ix.contains(&k)) {
                    let _ = std::fs::remove_file(&path);
                    orphans += 1;
                }
            }
        }
        {
            let keys: Vec<CacheKey> = disk.index.lock().iter().map(|(k, _)| *k).collect();
            for k in keys {
                if !disk.layout.entry_path(&k).exists() {
                    missing.push(k);
                }
            }
        }
        self.remove_entries(&missing);
        info!(
            orphans_removed = orphans,
            rows_dropped = missing.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache recovery after unclean shutdown finished"
        );
    }

    fn close(&self) -> Result<(), CacheError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
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

struct InFlightGuard<'a>(&'a Stats);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0
            .downloads_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Deletes a temporary file unless the download made it into the cache.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The MD5 in a single-part upload's ETag (`"<32 hex>"`); multipart ETags (`-N`) are not.
fn plain_md5(etag: &str) -> Option<String> {
    let t = etag.trim_matches('"').to_ascii_lowercase();
    (t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())).then_some(t)
}

fn checksum_file(file: &File, size: u64) -> io::Result<u32> {
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = file.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        off += n as u64;
    }
    if off != size {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "size changed"));
    }
    Ok(crc.finalize())
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
        }
    }

    async fn read_all(h: &ObjectHandle) -> Vec<u8> {
        h.read(0, h.size as usize).await.expect("read").to_vec()
    }

    #[test]
    fn plain_md5_only_for_single_part_etags() {
        assert!(plain_md5("\"9e107d9d372bb6826bd81d3542a419d6\"").is_some());
        assert!(plain_md5("\"9e107d9d372bb6826bd81d3542a419d6-3\"").is_none());
        assert!(plain_md5("").is_none());
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
