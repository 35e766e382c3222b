//! The on-disk half of the cache: [`Disk`] owns the cache directory, the in-memory
//! index, the durable index (db) and the downloads under way, and keeps them in
//! agreement: commits of complete downloads (in groups, one fsync each), evictions,
//! expiry, LRU positions written out, and the check of the disk against the index at
//! every start.
//!
//! Ordering on disk keeps the index conservative after a crash: victims' files are
//! unlinked before the index forgets them, and a new file is renamed into place only after
//! the index has it. So a crash can leave an index row without its file (dropped on use or
//! by recovery) but never an unaccounted file under a final name.

mod reconcile;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use super::checksum::{self, Checksums};
use super::clock::Clock;
use super::config::{CacheConfig, CacheError};
use super::db::{Batch, EntryRow, IndexDb};
use super::fill::{Fill, FillFailure};
use super::handle::CachedFile;
use super::index::{Entry, Index, NoRoom};
use super::key::CacheKey;
use super::layout::{Layout, Stamp};
use super::stats::{Stats, add, bump};
use crate::store::s3_url;
use reconcile::{open_index, reconcile};

pub(super) type Flight = Shared<BoxFuture<'static, Result<Arc<Fill>, Arc<CacheError>>>>;

/// The on-disk half, absent when the cache is off: the files, the index and the durable
/// index (db), kept in agreement under `write_lock`, and the downloads under way.
///
/// The downloads under way (`flights`) live here too, not with the downloads: a commit
/// and the start's check consult them under the write lock to tell a current download
/// from a replaced one, and an open relies on a download entering the index before it
/// leaves `flights`.
pub(super) struct Disk {
    /// Before `layout`, so it is closed first: fields drop in order, and the layout holds
    /// the lock that lets the next opener in.
    pub(super) db: IndexDb,
    pub(super) layout: Layout,
    pub(super) index: Mutex<Index>,
    /// Entries used since their LRU position was last written out.
    pub(super) dirty: Mutex<HashSet<CacheKey>>,
    /// Serialises changes to files + index + db so the three agree.
    write_lock: Mutex<()>,
    /// Downloads under way: (flight id, the start of the download to await).
    pub(super) flights: Mutex<HashMap<CacheKey, (u64, Flight)>>,
    pub(super) next_flight: std::sync::atomic::AtomicU64,
    /// Resolves when the start's check of the disk against the index has finished.
    pub(super) recovered: tokio::sync::watch::Receiver<bool>,
    /// Set by `close`: the start's check stops at the next shard, so the directory (and
    /// its lock) is free once `close` returns.
    closing: std::sync::atomic::AtomicBool,
    /// Complete downloads waiting for the next group commit (see [`COMMIT_DELAY`]).
    pub(super) pending: Mutex<Vec<Pending>>,
    /// Wakes the committer when `pending` gets its first download.
    pub(super) commit_due: Arc<tokio::sync::Notify>,
    /// The cache's counters (shared with the facade): evictions, expirations and the
    /// like are counted where they happen.
    stats: Arc<Stats>,
    clock: Arc<dyn Clock>,
    /// The AWS profile, written into each entry's row so a lost index can be rebuilt.
    profile: String,
    /// For the sweep: entries created longer ago than this (the TTL) are removed.
    ttl_ms: u64,
}

/// A complete, verified download on its way into the index.
pub(super) struct Pending {
    pub(super) fill: Arc<Fill>,
    pub(super) sums: Checksums,
}

/// How long a complete download waits to be committed with the others that completed
/// meanwhile. Each commit costs an fsync, which on ext4 also writes back every cache file
/// written since the last one: one per download would cost a small object a third of its
/// open time. The bytes are served from the download in the meantime.
const COMMIT_DELAY: Duration = Duration::from_millis(100);

/// Longest `close` waits for the start's check of the disk to let go of the cache.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Disk {
    /// Opens the cache directory and its index, then starts the background work: the
    /// check of the disk against the index, the group committer and the periodic sweep.
    /// Must be called inside a Tokio runtime.
    pub(super) fn open(
        cfg: &CacheConfig,
        stats: Arc<Stats>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Disk>, CacheError> {
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
        let disk = Arc::new(Disk {
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
            stats,
            clock,
            profile: cfg.profile.clone(),
            ttl_ms: cfg.ttl_ms(),
        });
        // Over-limit after a config change (a smaller max size): trim at once.
        disk.trim_to_limits();
        let weak = Arc::downgrade(&disk);
        // Files the index does not know (a lost index, a crash) and rows whose file
        // is gone: found in the background at every start, so the start itself takes
        // the same time however large the cache.
        let w = weak.clone();
        tokio::task::spawn_blocking(move || {
            reconcile(&w);
            let _ = done_tx.send(true);
        });
        tokio::spawn(commit_loop(weak.clone(), disk.commit_due.clone()));
        tokio::spawn(sweep_loop(weak, cfg.sweep_interval));
        Ok(disk)
    }

    /// Opens an entry's file for reading. Its checksums are checked (the whole file, on
    /// the blocking pool) on first use in this process and whenever the file was touched
    /// since its last check (another [`Stamp`]), before the file is handed out (for
    /// passthrough, the kernel then reads it without us). `None` means the entry was
    /// unusable and has been dropped.
    pub(super) async fn open_entry_file(
        &self,
        k: &CacheKey,
        entry: &Entry,
    ) -> Option<Arc<CachedFile>> {
        let path = self.layout.entry_path(k);
        let same = |e: &Entry| e.etag == entry.etag && e.created_ms == entry.created_ms;
        let dropped = |why: &str, corrupt: bool| {
            if corrupt {
                warn!(path = %path.display(), "{why}; fetching it again");
                bump(&self.stats.corruptions);
            } else {
                debug!(path = %path.display(), "{why}; fetching it again");
            }
            let _w = self.write_lock.lock();
            // Only if it is still the entry we looked at.
            if self.index.lock().peek(k).is_some_and(same) {
                self.remove_entries_locked(&[*k]);
            }
            None
        };
        let file = match self.layout.open_entry(k) {
            Ok(f) => f,
            // Usually an eviction that won the race with this open; else a file lost on
            // disk, or one that is not ours.
            Err(e) => return dropped(&format!("cache file unusable ({e})"), false),
        };
        // Still the entry we validated? (Evicted and fetched again meanwhile: look again.)
        if !self.index.lock().peek(k).is_some_and(same) {
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
            let row = self.db.row(k).ok().flatten();
            let want = row.as_ref().map(|r| r.blocks.clone()).unwrap_or_default();
            let (f, size) = (file.clone(), entry.size);
            let sums = tokio::task::spawn_blocking(move || checksum::checksum_file(&f, size).ok())
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
                let _w = self.write_lock.lock();
                if self.index.lock().peek(k).is_some_and(same) {
                    let _ = self.db.apply(
                        &Batch {
                            upserts: vec![(*k, row, access)],
                            ..Batch::default()
                        },
                        false,
                    );
                }
            }
            let _ = blocks.set(sums.blocks);
            self.index.lock().set_checked(k, stamp.hash64());
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
    pub(super) fn corrupt_file(&self, f: &CachedFile, bucket: &str, key: &str) {
        if f.corrupt.swap(true, Ordering::Relaxed) {
            return;
        }
        bump(&self.stats.corruptions);
        warn!(url = %s3_url(bucket, key), "a block of the cache file does not match its checksum: dropping the entry; reading S3 instead");
        let _w = self.write_lock.lock();
        if self
            .index
            .lock()
            .peek(&f.key)
            .is_some_and(|e| e.created_ms == f.created_ms)
        {
            self.remove_entries_locked(&[f.key]);
        }
    }

    /// Holds room for a download of `size` bytes, evicting what must go. When nothing
    /// must, only the index lock is taken: a commit holding the write lock through its
    /// fsync does not delay the next download. The size limit in force is the configured
    /// one or, when the disk has less room, what the disk can take.
    pub(super) fn reserve_room(
        &self,
        k: &CacheKey,
        size: u64,
        may_evict: bool,
    ) -> Result<(), CacheError> {
        let cap = self.disk_cap();
        let no_room = |e: NoRoom| match e {
            NoRoom::TooLarge(t) => CacheError::TooLarge(t),
            NoRoom::Held => CacheError::Full(size),
        };
        {
            let mut ix = self.index.lock();
            ix.set_disk_cap(cap);
            if ix.victims_for(k, size).map_err(no_room)?.is_empty() {
                ix.reserve(size);
                return Ok(());
            }
        }
        if !may_evict {
            return Err(CacheError::NoRoom(size));
        }
        let _w = self.write_lock.lock();
        loop {
            // Checked and reserved under one index lock: a reservation on the fast path
            // may have taken the room freed by the last round.
            let victims = {
                let mut ix = self.index.lock();
                let victims = ix.victims_for(k, size).map_err(no_room)?;
                if victims.is_empty() {
                    ix.reserve(size);
                    return Ok(());
                }
                victims
            };
            self.remove_entries_locked(&victims);
            add(&self.stats.evictions, victims.len() as u64);
        }
    }

    /// The most the cache may hold on its disk now: what it holds plus the free space,
    /// less a reserve left to everything else (5% of the filesystem, at most 1 GiB).
    /// `None` when the disk has room for the configured limit, or cannot say.
    fn disk_cap(&self) -> Option<u64> {
        let space = self.layout.space().ok()?;
        let keep_free = (space.total / 20).min(1 << 30);
        let (held, max_size) = {
            let ix = self.index.lock();
            (ix.total_size(), ix.max_size())
        };
        let cap = held.saturating_add(space.available.saturating_sub(keep_free));
        (cap < max_size).then_some(cap)
    }

    /// Ends a download's flight: later opens find its entry (or fetch anew).
    pub(super) fn end_flight(&self, fill: &Fill) {
        {
            // Checked and removed under one lock: a newer version's download may take
            // the key's place at any moment.
            let mut flights = self.flights.lock();
            if flights
                .get(&fill.cache_key)
                .is_some_and(|(id, _)| *id == fill.flight)
            {
                flights.remove(&fill.cache_key);
            }
        }
        // Last: "no download in flight" then means committed and visible to opens.
        self.stats
            .downloads_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Puts every complete download waiting in `pending` into the cache with one durable
    /// index commit, then ends their flights.
    pub(super) fn commit_pending(&self) {
        let batch = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return;
        }
        let results = self.commit_inserts(&batch);
        for (p, r) in batch.iter().zip(results) {
            let url = s3_url(&p.fill.bucket, &p.fill.key);
            match r {
                Ok(true) => debug!(%url, size = p.fill.size, "download complete and cached"),
                Ok(false) => debug!(%url, "download of a replaced version finished; not kept"),
                // Every byte is there for the handles already open; it is just not kept.
                Err(e) => warn!(%url, error = %e, "could not keep the download in the cache"),
            }
            p.fill.finish(Ok(()));
            self.end_flight(&p.fill);
        }
    }

    /// The index, db and file half of [`Disk::commit_pending`]: `Ok(false)` for a
    /// download replaced by a newer version meanwhile, which must not overwrite its entry.
    /// In two steps under the write lock: each download's victims are chosen and evicted
    /// and its row staged, in order (each sees the room the ones before it took); then
    /// the whole group is applied with one durable db commit.
    ///
    /// Each download's room stays reserved until its entry takes it over (under one index
    /// lock), so a download reserving meanwhile cannot count it as free. Files go before
    /// their room is given back: the disk never holds more than the limits.
    fn commit_inserts(&self, batch: &[Pending]) -> Vec<Result<bool, CacheError>> {
        let _w = self.write_lock.lock();
        let now = self.clock.now_ms();
        let mut db_batch = Batch::default();
        let mut results: Vec<Result<bool, CacheError>> = Vec::with_capacity(batch.len());
        for p in batch {
            results.push(self.stage_insert(p, now, &mut db_batch));
        }
        self.apply_inserts(batch, &db_batch, now, &mut results);
        results
    }

    /// The first step of [`Disk::commit_inserts`] for one download: makes room for it
    /// (victims' files first, then the index; their rows go with the group's commit) and
    /// stages its row in `db_batch`. The write lock is held.
    fn stage_insert(
        &self,
        p: &Pending,
        now: u64,
        db_batch: &mut Batch,
    ) -> Result<bool, CacheError> {
        let f = &p.fill;
        // A download replaced by one of a newer version must not overwrite its entry.
        let current = self
            .flights
            .lock()
            .get(&f.cache_key)
            .is_some_and(|(id, _)| *id == f.flight);
        if !current {
            self.drop_download(p);
            return Ok(false);
        }
        let victims = match self.choose_victims(f) {
            Ok(v) => v,
            Err(e) => {
                self.drop_download(p);
                bump(&self.stats.not_kept);
                return Err(match e {
                    NoRoom::TooLarge(t) => CacheError::TooLarge(t),
                    NoRoom::Held => CacheError::Full(f.size),
                });
            }
        };
        for v in &victims {
            let _ = self.layout.remove_entry(v);
        }
        {
            let mut ix = self.index.lock();
            for v in &victims {
                ix.remove(v);
            }
        }
        add(&self.stats.evictions, victims.len() as u64);
        db_batch.removes.extend(victims);
        let seq = self.index.lock().next_seq() + db_batch.upserts.len() as u64;
        let mut row = EntryRow {
            url: s3_url(&f.bucket, &f.key),
            profile: self.profile.clone(),
            etag: f.etag.clone(),
            size: f.size,
            created_ms: now,
            crc32: p.sums.crc32,
            blocks: Vec::new(),
        };
        // The file carries its row (without the block checksums, which may not fit
        // in an extended attribute), so a lost index can be rebuilt from the files.
        if let (Some(file), Ok(json)) = (f.file(), serde_json::to_vec(&row)) {
            self.layout.write_row(&file, &json);
        }
        row.blocks = p.sums.blocks.clone();
        db_batch.upserts.push((f.cache_key, row, (seq, now, 0)));
        Ok(true)
    }

    /// The entries that must go for a complete download to become an entry. Its own
    /// reservation is not counted (it is what the entry takes over) but stays held
    /// throughout, under one index lock.
    fn choose_victims(&self, f: &Fill) -> Result<Vec<CacheKey>, NoRoom> {
        let mut ix = self.index.lock();
        ix.unreserve(f.size);
        let victims = ix.victims_for(&f.cache_key, f.size);
        ix.reserve(f.size);
        victims
    }

    /// The second step of [`Disk::commit_inserts`]: commits the staged rows durably, then
    /// renames each file into place and only then lets the index have it (the ordering of
    /// the module comment). A failure turns the download's result into an error and drops
    /// it. The write lock is held.
    fn apply_inserts(
        &self,
        batch: &[Pending],
        db_batch: &Batch,
        now: u64,
        results: &mut [Result<bool, CacheError>],
    ) {
        if let Err(e) = self.db.apply(db_batch, true) {
            let e = CacheError::from(e);
            for (p, r) in batch.iter().zip(results.iter_mut()) {
                if matches!(r, Ok(true)) {
                    self.drop_download(p);
                    bump(&self.stats.not_kept);
                    *r = Err(CacheError::Internal(e.to_string()));
                }
            }
            return;
        }
        for (p, r) in batch.iter().zip(results.iter_mut()) {
            if !matches!(r, Ok(true)) {
                continue;
            }
            let f = &p.fill;
            if let Err(source) = self.layout.commit_temp(&f.tmp_name, &f.cache_key) {
                let _ = self.db.apply(
                    &Batch {
                        removes: vec![f.cache_key],
                        ..Batch::default()
                    },
                    true,
                );
                self.drop_download(p);
                bump(&self.stats.not_kept);
                *r = Err(CacheError::Io {
                    path: self.layout.entry_path(&f.cache_key),
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
                let mut ix = self.index.lock();
                ix.unreserve(f.size);
                ix.insert(f.cache_key, entry);
            }
            self.dirty.lock().insert(f.cache_key);
        }
    }

    /// A download that does not become an entry: its file goes, then its room.
    fn drop_download(&self, p: &Pending) {
        self.layout.remove_temp(&p.fill.tmp_name);
        self.index.lock().unreserve(p.fill.size);
    }

    /// Forgets entries and deletes their files (files first: see the module comment).
    pub(super) fn remove_entries(&self, keys: &[CacheKey]) {
        if keys.is_empty() {
            return;
        }
        let _w = self.write_lock.lock();
        self.remove_entries_locked(keys);
    }

    /// [`Disk::remove_entries`] for a caller already holding the write lock.
    fn remove_entries_locked(&self, keys: &[CacheKey]) {
        if keys.is_empty() {
            return;
        }
        for k in keys {
            let _ = self.layout.remove_entry(k);
        }
        {
            let mut ix = self.index.lock();
            for k in keys {
                ix.remove(k);
            }
        }
        let batch = Batch {
            removes: keys.to_vec(),
            ..Batch::default()
        };
        if let Err(e) = self.db.apply(&batch, true) {
            // The files are gone: the rows are dropped at the next start's check.
            warn!(error = %e, "could not record removal in the cache index");
        }
    }

    pub(super) fn sweep(&self) -> usize {
        let expired = self.index.lock().expired(self.clock.now_ms(), self.ttl_ms);
        if !expired.is_empty() {
            debug!(count = expired.len(), "removing expired cache entries");
            add(&self.stats.expirations, expired.len() as u64);
            self.remove_entries(&expired);
        }
        expired.len()
    }

    /// Evicts least recently used entries until the cache is within its limits, the size
    /// limit being the configured one or what the disk can take now, if less.
    pub(super) fn trim_to_limits(&self) {
        let cap = self.disk_cap();
        let victims = {
            let mut ix = self.index.lock();
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
        let keys: Vec<CacheKey> = self.dirty.lock().drain().collect();
        let touches = {
            let ix = self.index.lock();
            keys.iter()
                .filter_map(|k| ix.peek(k).map(|e| (*k, (e.seq, e.last_access_ms, e.hits))))
                .collect()
        };
        let batch = Batch {
            touches,
            ..Batch::default()
        };
        let _w = self.write_lock.lock();
        self.db.apply(&batch, durable)?;
        Ok(())
    }

    /// Ends every download under way: each one's flight ends now, so its eventual
    /// commit finds itself replaced and drops it, and one that has started stops fetching
    /// and closes and removes its file (its handles read S3 from here on).
    fn cancel_downloads(&self) -> usize {
        let flights: Vec<Flight> = self.flights.lock().drain().map(|(_, (_, f))| f).collect();
        for f in &flights {
            if let Some(Ok(fill)) = f.peek() {
                fill.finish(Err(FillFailure::Cancelled));
                self.layout.remove_temp(&fill.tmp_name);
            }
        }
        flights.len()
    }

    /// Empties the cache, downloads under way included: see `Cache::clear`. Returns
    /// (entries removed, downloads cancelled).
    pub(super) fn clear(&self) -> (usize, usize) {
        let _w = self.write_lock.lock();
        let cancelled = self.cancel_downloads();
        let keys = self.index.lock().keys_lru_first();
        self.remove_entries_locked(&keys);
        for shard in 0..=255u8 {
            for (_, name) in self.layout.scan_shard(shard) {
                self.layout.remove_in_shard(shard, &name);
            }
        }
        info!(entries = keys.len(), cancelled, "cache cleared");
        (keys.len(), cancelled)
    }

    pub(super) fn close(&self) -> Result<(), CacheError> {
        // The check of the disk may hold the cache for one shard more: wait for it, so
        // the directory is free for the next user when this returns.
        self.closing.store(true, Ordering::SeqCst);
        let waiting = std::time::Instant::now();
        let rx = &self.recovered;
        while !reconcile::running_here()
            && !*rx.borrow()
            && rx.has_changed().is_ok()
            && waiting.elapsed() < CLOSE_WAIT
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.commit_pending();
        // Downloads still waiting for bytes are dropped: their files go now, not at the
        // next start.
        self.cancel_downloads();
        self.flush_touches(true)?;
        self.db.set_meta("clean", 1)?;
        Ok(())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            warn!(error = %e, "closing the cache index");
        }
    }
}

async fn commit_loop(disk: Weak<Disk>, due: Arc<tokio::sync::Notify>) {
    loop {
        due.notified().await;
        tokio::time::sleep(COMMIT_DELAY).await;
        let Some(disk) = disk.upgrade() else { return };
        // An fsync: off the runtime's worker threads.
        let _ = tokio::task::spawn_blocking(move || disk.commit_pending()).await;
    }
}

async fn sweep_loop(disk: Weak<Disk>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(disk) = disk.upgrade() else { return };
        disk.sweep();
        if let Err(e) = disk.flush_touches(false) {
            warn!(error = %e, "writing LRU positions");
        }
    }
}
