//! Filesystem logic with no FUSE types: the inode table, directory listings from S3,
//! open handles reading through the cache, the virtual `.cache-stats` file, and the one
//! place errors become errno values. `fuse.rs` only translates kernel calls to these.
//!
//! Naming rules: a key is shown at the path its `/`-separated segments give. Segments
//! that cannot be POSIX names (empty, `.`, `..`, over 255 bytes, containing NUL) are
//! skipped with one warning each. When both `a` (an object) and `a/...` (a prefix)
//! exist, the directory wins and the object is hidden (one warning).

mod error;
mod inode;
mod readahead;

pub use error::FsError;
pub use inode::{Attr, Kind};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::cache::{Cache, ObjectHandle, Outcome};
use crate::config::Source;
use crate::store::{ObjectMeta, StoreError};
use inode::{InodeTable, Node, NodeData};

pub const ROOT_INO: u64 = 1;
pub const STATS_INO: u64 = 2;
pub const STATS_NAME: &str = ".cache-stats";

#[derive(Debug, Clone)]
pub struct FsConfig {
    pub source: Source,
    pub metadata_ttl: Duration,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// Files fetched ahead in a directory read in order (0: off).
    pub readahead_files: usize,
    /// Only objects up to this size are fetched ahead.
    pub readahead_max_size: u64,
}

/// What `open` tells the kernel besides the handle.
#[derive(Debug, Clone)]
pub struct Opened {
    pub fh: u64,
    /// Read through `read` every time (the stats file, whose size is not known ahead).
    pub direct_io: bool,
    /// The kernel may keep pages cached from an earlier open: same object version.
    pub keep_cache: bool,
    /// The local cache file holding the whole object, when there is one.
    pub cache_file: Option<Arc<std::fs::File>>,
}

enum OpenFile {
    Object(ObjectHandle),
    Stats(Bytes),
}

fn counts_as_lookup(e: &DirEntry) -> bool {
    e.name != "." && e.name != ".."
}

/// One entry of a directory as `readdir` returns it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

pub struct S3Fs {
    cfg: FsConfig,
    cache: Cache,
    inodes: Mutex<InodeTable>,
    files: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    readahead: Mutex<readahead::DirReadahead>,
    next_fh: AtomicU64,
    /// Keys already warned about, so each odd key is reported once.
    warned: Mutex<HashSet<String>>,
    /// Inodes an open was refused with ESTALE, and when (see `refuse_stale`).
    refused: Mutex<HashMap<u64, Instant>>,
}

/// How soon after an ESTALE an open of the same inode counts as the kernel's retry.
const RETRY_WINDOW: Duration = Duration::from_secs(1);

impl S3Fs {
    pub fn new(cfg: FsConfig, cache: Cache) -> S3Fs {
        S3Fs {
            inodes: Mutex::new(InodeTable::new(&cfg.source)),
            readahead: Mutex::new(readahead::DirReadahead::new(cfg.readahead_files)),
            cfg,
            cache,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            warned: Mutex::new(HashSet::new()),
            refused: Mutex::new(HashMap::new()),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn attr_ttl(&self) -> Duration {
        self.cfg.metadata_ttl
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.cfg.metadata_ttl
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == STATS_INO {
            return Ok(self.stats_attr(self.stats_json().len() as u64));
        }
        let inodes = self.inodes.lock();
        let node = inodes.get(ino).ok_or(FsError::NotFound)?;
        Ok(self.attr_of(ino, node))
    }

    fn attr_of(&self, ino: u64, node: &Node) -> Attr {
        match &node.data {
            NodeData::Dir { .. } => Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                mtime: node.mtime,
                perm: self.cfg.dir_mode,
                uid: self.cfg.uid,
                gid: self.cfg.gid,
            },
            NodeData::File { meta, .. } => Attr {
                ino,
                kind: Kind::File,
                size: meta.size,
                mtime: meta.last_modified.unwrap_or(node.mtime),
                perm: self.cfg.file_mode,
                uid: self.cfg.uid,
                gid: self.cfg.gid,
            },
        }
    }

    fn stats_attr(&self, size: u64) -> Attr {
        Attr {
            ino: STATS_INO,
            kind: Kind::File,
            size,
            mtime: SystemTime::now(),
            perm: 0o444 & self.cfg.file_mode | 0o400,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    /// The `.cache-stats` document, made fresh: the cache's counters, then the inodes the
    /// mount holds.
    pub fn stats_json(&self) -> Bytes {
        #[derive(serde::Serialize)]
        struct Doc {
            #[serde(flatten)]
            cache: crate::cache::StatsSnapshot,
            inodes: usize,
        }
        let doc = Doc {
            cache: self.cache.stats(),
            inodes: self.inodes.lock().len(),
        };
        let mut s = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        s.push(b'\n');
        Bytes::from(s)
    }

    /// Counts an error a program sees as EIO (`errors` in `.cache-stats`) and passes it on.
    fn counted(&self, e: FsError) -> FsError {
        if e.errno() == libc::EIO {
            self.cache.count_error();
        }
        e
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        self.lookup_inner(parent, name)
            .await
            .map_err(|e| self.counted(e))
    }

    async fn lookup_inner(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        if parent == ROOT_INO && name == STATS_NAME {
            return self.getattr(STATS_INO);
        }
        let entries = self.listing(parent).await?;
        let e = entries
            .iter()
            .find(|e| e.name == name)
            .ok_or(FsError::NotFound)?;
        let mut inodes = self.inodes.lock();
        let (ino, attr) = self
            .entry_attr(&inodes, parent, e)
            .ok_or(FsError::NotFound)?;
        inodes.looked_up(ino);
        Ok(attr)
    }

    /// The inode and attributes to hand out for `e` of `dir`: the listing's, or the
    /// current one of that name if a newer listing retired that version meanwhile.
    fn entry_attr(&self, inodes: &InodeTable, dir: u64, e: &DirEntry) -> Option<(u64, Attr)> {
        let ino = if inodes.is_current(e.ino) {
            e.ino
        } else {
            inodes.child_named(dir, &e.name, e.kind)?
        };
        Some((ino, self.attr_of(ino, inodes.get(ino)?)))
    }

    /// A READDIRPLUS entry of `dir`'s snapshot, as `entry_attr` gives it. The kernel counts
    /// every such entry but `.` and `..` as a lookup, and so does this, under the same
    /// lock, so the inode cannot go before the kernel has it; `plus_entry_unsent` takes
    /// the count back for an entry that did not fit in the reply.
    pub fn plus_entry(&self, dir: u64, e: &DirEntry) -> Option<(u64, Attr)> {
        if e.ino == STATS_INO {
            // Not an inode of the table; its size comes from a document that locks it.
            return self.getattr(STATS_INO).ok().map(|a| (STATS_INO, a));
        }
        let mut inodes = self.inodes.lock();
        let (ino, attr) = self.entry_attr(&inodes, dir, e)?;
        if counts_as_lookup(e) {
            inodes.looked_up(ino);
        }
        Some((ino, attr))
    }

    pub fn plus_entry_unsent(&self, e: &DirEntry, ino: u64) {
        if counts_as_lookup(e) {
            self.forget(ino, 1);
        }
    }

    /// The kernel forgot `n` lookups of `ino` (FORGET).
    pub fn forget(&self, ino: u64, n: u64) {
        if !self.inodes.lock().forget(ino, n) {
            warn!(ino, n, "the kernel forgot more lookups than were counted");
        }
    }

    /// Lists the root ahead of the first lookup. A failure is only logged: the mount
    /// already checked access, and the next lookup tries again.
    pub async fn prime_root(&self) {
        match self.listing(ROOT_INO).await {
            Ok(e) => debug!(entries = e.len(), "root listed ahead of use"),
            Err(e) => debug!(error = %e, "listing the root ahead of use failed"),
        }
    }

    /// The children of a directory, listed again from S3 when older than the TTL. When S3
    /// cannot be asked (unreachable, timing out, failing), the last listing is served
    /// instead, if there is one (stale-if-error, counted in `stale_served`).
    async fn listing(&self, dir: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        let (bucket, prefix, last) = {
            let inodes = self.inodes.lock();
            let node = inodes.get(dir).ok_or(FsError::NotFound)?;
            let NodeData::Dir {
                bucket,
                prefix,
                children,
            } = &node.data
            else {
                return Err(FsError::NotADirectory);
            };
            if let Some((Some(at), entries)) = children
                && self.fresh(*at)
            {
                return Ok(entries.clone());
            }
            let last = children.as_ref().map(|(_, e)| e.clone());
            (bucket.clone(), prefix.clone(), last)
        };
        match (self.list_from_s3(dir, bucket, prefix).await, last) {
            (Ok(entries), _) => Ok(entries),
            (Err(e), Some(last)) if e.is_transient() => {
                debug!(dir, error = %e, "S3 cannot be asked; serving the last listing");
                self.cache
                    .counters()
                    .stale_served
                    .fetch_add(1, Ordering::Relaxed);
                Ok(last)
            }
            (Err(e), _) => {
                if !matches!(e, StoreError::NotFound(_) | StoreError::Unavailable(_)) {
                    warn!(dir, error = %e, "listing failed");
                }
                Err(FsError::from_store(e))
            }
        }
    }

    /// Lists `dir` (`bucket` and `prefix` are its place in S3) and makes it the current
    /// listing.
    async fn list_from_s3(
        &self,
        dir: u64,
        bucket: Option<String>,
        prefix: String,
    ) -> Result<Arc<Vec<DirEntry>>, StoreError> {
        let fetched_at = Instant::now();
        let mut dirs: Vec<String> = Vec::new();
        let mut files: Vec<(String, ObjectMeta)> = Vec::new();
        match &bucket {
            None => {
                dirs = self.cache.store().list_buckets().await?;
            }
            Some(b) => {
                let listing = self.cache.store().list(b, &prefix, Some("/")).await?;
                for p in listing.prefixes {
                    let name = p.strip_prefix(prefix.as_str()).unwrap_or(&p);
                    let name = name.strip_suffix('/').unwrap_or(name);
                    if self.valid_name(name, b, &p) {
                        dirs.push(name.to_string());
                    }
                }
                let dir_names: HashSet<&str> = dirs.iter().map(String::as_str).collect();
                let mut taken = HashSet::new();
                for o in listing.objects {
                    let name = o.key.strip_prefix(prefix.as_str()).unwrap_or(&o.key);
                    // "dir/" itself: a directory marker, not a file.
                    if name.is_empty() {
                        continue;
                    }
                    if !self.valid_name(name, b, &o.key) {
                        continue;
                    }
                    if dir_names.contains(name) {
                        self.warn_once(&o.key, || {
                            warn!(key = %crate::cache::s3_url(b, &o.key), "object hidden: a directory of the same name wins")
                        });
                        continue;
                    }
                    if bucket.is_some() && dir == ROOT_INO && name == STATS_NAME {
                        self.warn_once(&o.key, || {
                            warn!(key = %crate::cache::s3_url(b, &o.key), "object hidden by the virtual .cache-stats file")
                        });
                        continue;
                    }
                    if taken.insert(name.to_string()) {
                        files.push((name.to_string(), o));
                    }
                }
            }
        }
        let entries = {
            let mut inodes = self.inodes.lock();
            // A listing started later may have landed first: it is the newer one.
            if let Some(newer) = inodes.listing_after(dir, fetched_at) {
                return Ok(newer);
            }
            let mut out = Vec::with_capacity(dirs.len() + files.len());
            for name in dirs {
                let (b, p) = match &bucket {
                    None => (name.clone(), String::new()),
                    Some(b) => (b.clone(), format!("{prefix}{name}/")),
                };
                let ino = inodes.dir_child(dir, &name, b, p);
                out.push(DirEntry {
                    ino,
                    kind: Kind::Dir,
                    name,
                });
            }
            for (name, meta) in files {
                let b = bucket.clone().unwrap_or_default();
                let ino = inodes.file_child(dir, &name, b, meta, fetched_at);
                out.push(DirEntry {
                    ino,
                    kind: Kind::File,
                    name,
                });
            }
            let out = Arc::new(out);
            inodes.set_children(dir, fetched_at, out.clone());
            out
        };
        debug!(dir, entries = entries.len(), "listed directory");
        Ok(entries)
    }

    fn valid_name(&self, name: &str, bucket: &str, key: &str) -> bool {
        let why = if name.is_empty() {
            "an empty path segment"
        } else if name == "." || name == ".." {
            "a '.' or '..' segment"
        } else if name.len() > 255 {
            "a segment longer than 255 bytes"
        } else if name.contains('\0') {
            "a NUL byte"
        } else if name.contains('/') {
            // Only from a server that ignored the delimiter: the kernel would fail the
            // whole directory's listing on it.
            "a '/' within a name"
        } else {
            return true;
        };
        self.warn_once(key, || {
            warn!(key = %crate::cache::s3_url(bucket, key), "skipping key: {why} cannot be a file name")
        });
        false
    }

    fn warn_once(&self, key: &str, f: impl FnOnce()) {
        if self.warned.lock().insert(key.to_string()) {
            f();
        }
    }

    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let children = self.listing(ino).await.map_err(|e| self.counted(e))?;
        let parent = self
            .inodes
            .lock()
            .get(ino)
            .map(|n| n.parent)
            .unwrap_or(ROOT_INO);
        let mut entries = Vec::with_capacity(children.len() + 3);
        entries.push(DirEntry {
            ino,
            kind: Kind::Dir,
            name: ".".into(),
        });
        entries.push(DirEntry {
            ino: parent,
            kind: Kind::Dir,
            name: "..".into(),
        });
        if ino == ROOT_INO {
            entries.push(DirEntry {
                ino: STATS_INO,
                kind: Kind::File,
                name: STATS_NAME.into(),
            });
        }
        entries.extend(children.iter().cloned());
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// Entries from `offset` on (offsets index the snapshot taken at opendir, so they
    /// stay valid however large the directory and whatever changes meanwhile).
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        let _ = offset;
        self.dirs.lock().get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// `write` is true for any open that asks to write or truncate.
    pub async fn open(
        self: &Arc<Self>,
        ino: u64,
        write: bool,
        direct: bool,
    ) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if ino == STATS_INO {
            self.files
                .lock()
                .insert(fh, OpenFile::Stats(self.stats_json()));
            return Ok(Opened {
                fh,
                direct_io: true,
                keep_cache: false,
                cache_file: None,
            });
        }
        let started = Instant::now();
        let (bucket, key, known, pinned) = {
            let inodes = self.inodes.lock();
            let node = inodes.get(ino).ok_or(FsError::NotFound)?;
            // The name stands for a newer version now. ESTALE makes the kernel look the
            // path up again (LOOKUP_REVAL) and retry the open once, on the new inode;
            // an inode the retry cannot get away from is "pinned" (see `refuse_stale`).
            let pinned = if inodes.is_current(ino) {
                false
            } else if self.refuse_stale(ino) {
                return Err(FsError::Stale);
            } else {
                true
            };
            match &node.data {
                NodeData::Dir { .. } => return Err(FsError::IsADirectory),
                NodeData::File {
                    bucket,
                    key,
                    meta,
                    learned,
                    ..
                } => {
                    let known = (meta.etag.is_some() && self.fresh(*learned) && !pinned)
                        .then(|| meta.clone());
                    (bucket.clone(), key.clone(), known, pinned)
                }
            }
        };
        let known_etag = known.as_ref().and_then(|m| m.etag.clone());
        let opening = async {
            if direct {
                self.cache.open_uncached(&bucket, &key).await
            } else {
                self.cache.open_object(&bucket, &key, known).await
            }
        };
        // However many requests the open takes (a HEAD, the first part), it answers
        // within the read timeout.
        let within = self.cache.config().read_timeout;
        let handle = match tokio::time::timeout(within, opening).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let err = FsError::from_cache(&e);
                if matches!(err, FsError::NotFound) {
                    self.inodes.lock().forget_listing_of(ino);
                } else if !matches!(e.store_error(), Some(StoreError::Unavailable(_))) {
                    warn!(url = %crate::cache::s3_url(&bucket, &key), error = %e, "open failed");
                }
                return Err(self.counted(err));
            }
            Err(_) => {
                warn!(url = %crate::cache::s3_url(&bucket, &key), "open failed: no answer from S3 within the read timeout");
                return Err(self.counted(FsError::Io("no answer from S3 in time".into())));
            }
        };
        debug!(url = %crate::cache::s3_url(&bucket, &key), outcome = ?handle.outcome, "opened");
        // S3 said which version this is, unless the open trusted what was known and got
        // just that, or could not ask (a transient failure served the cached copy).
        let from_s3 = handle.outcome != Outcome::StaleHit
            && known_etag.as_deref() != Some(handle.etag.as_str());
        let confirmed = from_s3.then_some(started);
        let keep_cache = {
            let mut inodes = self.inodes.lock();
            if pinned {
                inodes.adopt_version(ino, &handle.etag, handle.size, confirmed);
            } else if !inodes.found_version(ino, &handle.etag, handle.size, confirmed) {
                debug!(url = %crate::cache::s3_url(&bucket, &key), etag = %handle.etag,
                    "a new version: the kernel must look the name up again");
                drop(inodes);
                self.refuse_stale(ino);
                return Err(FsError::Stale);
            }
            inodes.note_opened(ino, &handle.etag, handle.file().is_some())
        };
        let opened = Opened {
            fh,
            direct_io: false,
            keep_cache,
            cache_file: handle.file().cloned(),
        };
        self.files.lock().insert(fh, OpenFile::Object(handle));
        if !direct {
            self.read_ahead_after(ino);
        }
        Ok(opened)
    }

    /// Records that an open of `ino` is answered ESTALE, and returns true; but returns
    /// false if it was answered so within [`RETRY_WINDOW`], for then this open is the
    /// kernel's retry and it came back to the same inode: the path leads to it whatever
    /// the lookup says (a file bind-mounted on its own, a reopen through /proc/self/fd).
    /// Such an inode is opened at the current version instead of failing every time.
    fn refuse_stale(&self, ino: u64) -> bool {
        let now = Instant::now();
        let mut refused = self.refused.lock();
        refused.retain(|_, at| now.duration_since(*at) < RETRY_WINDOW);
        if refused.remove(&ino).is_some() {
            debug!(
                ino,
                "the retry came back to the same inode: opening it anyway"
            );
            return false;
        }
        refused.insert(ino, now);
        true
    }

    /// Directory read-ahead (see `readahead.rs`): starts downloads of the small files
    /// that follow `ino` in its directory when the opens there go in listing order.
    fn read_ahead_after(self: &Arc<Self>, ino: u64) {
        if self.cfg.readahead_files == 0 {
            return;
        }
        let picks: Vec<(u64, String, String, ObjectMeta)> = {
            let inodes = self.inodes.lock();
            let Some(Node {
                parent,
                data: NodeData::File { key, .. },
                ..
            }) = inodes.get(ino)
            else {
                return;
            };
            let (parent, name) = (*parent, key.rsplit('/').next().unwrap_or(key));
            let Some(Node {
                data:
                    NodeData::Dir {
                        children: Some((_, entries)),
                        ..
                    },
                ..
            }) = inodes.get(parent)
            else {
                return;
            };
            // Found by name, not by a scan: this runs on every open, and listings come
            // sorted (S3 order), directories first.
            let files_from = entries.partition_point(|e| e.kind == Kind::Dir);
            let Ok(i) = entries[files_from..].binary_search_by(|e| e.name.as_str().cmp(name))
            else {
                return;
            };
            let pos = files_from + i;
            if entries[pos].ino != ino {
                return;
            }
            let ahead = self.readahead.lock().opened(parent, pos, entries.len());
            entries[ahead]
                .iter()
                .filter_map(|e| match inodes.get(e.ino).map(|n| &n.data) {
                    Some(NodeData::File {
                        bucket,
                        key,
                        meta,
                        learned,
                        ..
                    }) if meta.size <= self.cfg.readahead_max_size => {
                        let mut m = meta.clone();
                        if !self.fresh(*learned) {
                            m.etag = None;
                        }
                        Some((e.ino, bucket.clone(), key.clone(), m))
                    }
                    _ => None,
                })
                .collect()
        };
        for (ino, bucket, key, meta) in picks {
            let fs = self.clone();
            tokio::spawn(async move {
                match fs
                    .cache
                    .prefetch(&bucket, &key, meta.size, Some(meta))
                    .await
                {
                    Ok(Some((etag, size))) => {
                        fs.inodes
                            .lock()
                            .found_version(ino, &etag, size, Some(Instant::now()));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        debug!(url = %crate::cache::s3_url(&bucket, &key), error = %e, "read-ahead skipped")
                    }
                }
            });
        }
    }

    /// Serves a read from a cache file or the stats snapshot without leaving the calling
    /// thread; `None` means it needs S3 and must go through [`S3Fs::read`].
    pub fn read_fast(&self, fh: u64, offset: u64, size: u32) -> Option<Result<Bytes, FsError>> {
        let files = self.files.lock();
        match files.get(&fh) {
            None => Some(Err(FsError::BadHandle)),
            Some(OpenFile::Stats(b)) => Some(Ok(slice(b, offset, size))),
            Some(OpenFile::Object(h)) => {
                let h = h.clone();
                drop(files);
                // Object reads only: passthrough tests watch this stay still.
                self.cache
                    .counters()
                    .read_requests
                    .fetch_add(1, Ordering::Relaxed);
                h.try_read(offset, size as usize)
                    .map(|r| r.map_err(|e| self.counted(FsError::from_cache(&e))))
            }
        }
    }

    /// A read that may wait on S3 (call [`S3Fs::read_fast`] first).
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let h = match self.files.lock().get(&fh) {
            Some(OpenFile::Object(h)) => h.clone(),
            Some(OpenFile::Stats(b)) => return Ok(slice(b, offset, size)),
            None => return Err(FsError::BadHandle),
        };
        h.read(offset, size as usize).await.map_err(|e| {
            if !matches!(e.store_error(), Some(StoreError::Unavailable(_))) {
                warn!(url = %crate::cache::s3_url(&h.bucket, &h.key), error = %e, "read failed");
            }
            self.counted(FsError::from_cache(&e))
        })
    }

    /// The kernel reads this handle's cache file itself (passthrough): count its bytes
    /// as served from the cache, since its reads never reach us.
    pub fn passthrough_opened(&self, fh: u64) {
        let size = match self.files.lock().get(&fh) {
            Some(OpenFile::Object(h)) => h.size,
            _ => return,
        };
        let c = self.cache.counters();
        c.passthrough_opens.fetch_add(1, Ordering::Relaxed);
        c.bytes_from_cache.fetch_add(size, Ordering::Relaxed);
    }

    pub fn release(&self, fh: u64) {
        self.files.lock().remove(&fh);
    }
}

fn slice(b: &Bytes, offset: u64, size: u32) -> Bytes {
    let start = (offset as usize).min(b.len());
    let end = start.saturating_add(size as usize).min(b.len());
    b.slice(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheConfig, SystemClock};
    use crate::store::MemoryStore;

    fn fs_over(store: Arc<MemoryStore>) -> S3Fs {
        let cache = Cache::open(
            CacheConfig {
                enabled: false,
                dir: "/nonexistent".into(),
                max_size: 1 << 20,
                max_entries: 10,
                ttl: Duration::from_secs(60),
                validate_etag: true,
                profile: "default".into(),
                sweep_interval: Duration::from_secs(60),
                part_size: CacheConfig::DEFAULT_PART_SIZE,
                fill_concurrency: CacheConfig::DEFAULT_FILL_CONCURRENCY,
                read_timeout: Duration::from_secs(30),
            },
            store,
            Arc::new(SystemClock),
        )
        .expect("cache");
        S3Fs::new(
            FsConfig {
                source: Source::Bucket {
                    bucket: "bkt".into(),
                    prefix: String::new(),
                },
                metadata_ttl: Duration::from_secs(60),
                uid: 0,
                gid: 0,
                file_mode: 0o444,
                dir_mode: 0o555,
                readahead_files: 0,
                readahead_max_size: 0,
            },
            cache,
        )
    }

    #[tokio::test]
    async fn odd_keys_are_skipped_and_directories_win() {
        let store = Arc::new(MemoryStore::new());
        let long = format!("odd/{}", "a".repeat(300));
        for k in [
            "odd//double",
            "odd/./dot",
            "odd/../up",
            long.as_str(),
            "odd/ok",
            "odd/a",
            "odd/a/b",
            "odd/",
        ] {
            store.put("bkt", k, k.to_string());
        }
        let fs = Arc::new(fs_over(store));
        let odd = fs.lookup(ROOT_INO, "odd").await.expect("odd");
        assert_eq!(odd.kind, Kind::Dir);
        let fh = fs.opendir(odd.ino).await.expect("opendir");
        let names: Vec<(String, Kind)> = fs
            .readdir(fh, 0)
            .expect("readdir")
            .iter()
            .map(|e| (e.name.clone(), e.kind))
            .collect();
        assert_eq!(
            names,
            vec![
                (".".to_string(), Kind::Dir),
                ("..".to_string(), Kind::Dir),
                ("a".to_string(), Kind::Dir),
                ("ok".to_string(), Kind::File),
            ]
        );
        let a = fs.lookup(odd.ino, "a").await.expect("a");
        assert_eq!(a.kind, Kind::Dir);
        let b = fs.lookup(a.ino, "b").await.expect("b");
        let opened = fs.open(b.ino, false, false).await.expect("open");
        let data = fs.read(opened.fh, 0, 100).await.expect("read");
        assert_eq!(&data[..], b"odd/a/b");
        assert_eq!(fs.lookup(odd.ino, "..").await, Err(FsError::NotFound));
        assert_eq!(
            fs.open(b.ino, true, false).await.err(),
            Some(FsError::ReadOnly)
        );
    }

    #[tokio::test]
    async fn inode_numbers_are_stable_until_the_object_changes() {
        let store = Arc::new(MemoryStore::new());
        store.put("bkt", "f", "one");
        let mut fs = fs_over(store.clone());
        fs.cfg.metadata_ttl = Duration::ZERO;
        let first = fs.lookup(ROOT_INO, "f").await.expect("f");
        assert_eq!(fs.lookup(ROOT_INO, "f").await.expect("f").ino, first.ino);
        store.put("bkt", "f", "two!");
        let second = fs.lookup(ROOT_INO, "f").await.expect("f");
        assert_ne!(second.ino, first.ino);
        assert_eq!(second.size, 4);
        // The old inode still answers for handles opened on it.
        assert_eq!(fs.getattr(first.ino).expect("old").size, 3);
    }
}
