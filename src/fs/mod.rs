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
mod listing;
mod metrics;
mod open;
mod readahead;
mod types;

pub use error::FsError;
pub use metrics::ReadMetrics;
pub use types::{
    Attr, DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, DEFAULT_METADATA_TTL, DEFAULT_READAHEAD_FILES,
    DirEntry, FsConfig, FsStats, Kind, Opened, ROOT_INO, STATS_INO, STATS_NAME, Source,
};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
// tokio's clock: the real one, which tests can pause and move (metadata TTL, retry window).
use tokio::time::Instant;
use tracing::warn;

use crate::cache::{Cache, ObjectHandle};
use inode::{InodeTable, Node, NodeData};
use metrics::ReadTimer;

enum OpenFile {
    Object(ObjectHandle, ReadTimer),
    Stats(Bytes),
}

fn counts_as_lookup(e: &DirEntry) -> bool {
    e.name != "." && e.name != ".."
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

/// What `.cache-stats` shows: the cache's counters, then what the mount itself holds.
#[derive(serde::Serialize)]
struct StatsDoc {
    #[serde(flatten)]
    cache: crate::cache::StatsSnapshot,
    inodes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
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
    /// The cache's size and entry limits as a filesystem's blocks and inodes.
    pub fn statfs(&self) -> FsStats {
        const BLOCK: u64 = 4096;
        let s = self.cache.stats();
        FsStats {
            block_size: BLOCK as u32,
            blocks: s.max_size / BLOCK,
            blocks_free: s.max_size.saturating_sub(s.total_size) / BLOCK,
            files: s.max_entries,
            files_free: s.max_entries.saturating_sub(s.entry_count),
            name_max: 255,
        }
    }

    pub fn stats_json(&self) -> Bytes {
        let mut s = serde_json::to_vec_pretty(&self.stats_doc()).unwrap_or_default();
        s.push(b'\n');
        Bytes::from(s)
    }

    /// The `.cache-stats` document as JSON values, for `/metrics`: the same numbers the
    /// file shows, read at the same moment.
    pub fn stats_value(&self) -> serde_json::Value {
        serde_json::to_value(self.stats_doc()).unwrap_or_default()
    }

    fn stats_doc(&self) -> StatsDoc {
        StatsDoc {
            cache: self.cache.stats(),
            inodes: self.inodes.lock().len(),
            metrics_addr: self.cfg.metrics_addr.map(|a| a.to_string()),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheConfig, SystemClock};
    use crate::store::MemoryStore;

    fn fs_over(store: Arc<MemoryStore>) -> S3Fs {
        fs_with(store, None, 0)
    }

    /// `cache_dir`: a cache on disk there (else the cache is off); `readahead`: files
    /// fetched ahead.
    fn fs_with(
        store: Arc<MemoryStore>,
        cache_dir: Option<&std::path::Path>,
        readahead: usize,
    ) -> S3Fs {
        let cache = Cache::open(
            CacheConfig {
                enabled: cache_dir.is_some(),
                max_size: 1 << 20,
                max_entries: 10,
                ttl: Duration::from_secs(60),
                read_timeout: Duration::from_secs(30),
                ..CacheConfig::at(cache_dir.unwrap_or("/nonexistent".as_ref()))
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
                readahead_files: readahead,
                readahead_max_size: CacheConfig::DEFAULT_PART_SIZE,
                read_metrics: ReadMetrics::default(),
                metrics_addr: None,
            },
            cache,
        )
    }

    /// Two opens in a row of neighbouring files start downloads of the next ones, as
    /// many as asked, and no further; a lone open starts none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn neighbouring_opens_fetch_the_next_files_ahead() {
        let store = Arc::new(MemoryStore::new());
        for i in 0..8 {
            store.put("bkt", &format!("d/f{i}"), format!("file {i}"));
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let fs = Arc::new(fs_with(store, Some(&tmp.path().join("cache")), 2));
        let d = fs.lookup(ROOT_INO, "d").await.expect("d").ino;
        let ino = |name: &'static str| {
            let fs = fs.clone();
            async move { fs.lookup(d, name).await.expect("lookup").ino }
        };
        let first = fs.open(ino("f0").await, false, false).await.expect("open");
        fs.cache().wait_for_downloads().await;
        assert!(
            !fs.cache().contains("bkt", "d/f1"),
            "one open is no pattern"
        );
        let second = fs.open(ino("f1").await, false, false).await.expect("open");
        // The read-ahead runs in tasks of its own: wait for what it fetched.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(fs.cache().contains("bkt", "d/f2") && fs.cache().contains("bkt", "d/f3")) {
            assert!(
                std::time::Instant::now() < deadline,
                "f2 and f3 fetched ahead"
            );
            fs.cache().wait_for_downloads().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fs.cache().wait_for_downloads().await;
        assert!(!fs.cache().contains("bkt", "d/f4"), "only as many as asked");
        assert_eq!(fs.cache().stats().prefetches, 2);
        fs.release(first.fh);
        fs.release(second.fh);
    }

    /// A listing is trusted for the metadata TTL, then asked for again; on a paused
    /// clock moved by hand, not wall-clock windows.
    #[tokio::test(start_paused = true)]
    async fn a_listing_is_trusted_for_the_metadata_ttl_then_listed_again() {
        let store = Arc::new(MemoryStore::new());
        store.put("bkt", "a", "1");
        let fs = fs_over(store.clone());
        fs.lookup(ROOT_INO, "a").await.expect("listed");
        store.put("bkt", "b", "2");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(
            matches!(fs.lookup(ROOT_INO, "b").await, Err(FsError::NotFound)),
            "within the TTL the listing stands"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        fs.lookup(ROOT_INO, "b")
            .await
            .expect("listed again after the TTL");
    }

    /// An open of an inode whose object has a newer version answers ESTALE once; the
    /// kernel's retry coming back to the same inode within the retry window opens it,
    /// and after the window it is refused again.
    #[tokio::test(start_paused = true)]
    async fn estale_once_then_the_retry_to_the_same_inode_opens_it() {
        let store = Arc::new(MemoryStore::new());
        store.put("bkt", "obj", "v1");
        let fs = Arc::new(fs_over(store.clone()));
        let old = fs.lookup(ROOT_INO, "obj").await.expect("lookup").ino;
        store.put("bkt", "obj", "v2!");
        tokio::time::advance(Duration::from_secs(61)).await;
        let new = fs.lookup(ROOT_INO, "obj").await.expect("lookup").ino;
        assert_ne!(old, new, "a new version is a new inode");
        assert!(matches!(
            fs.open(old, false, false).await,
            Err(FsError::Stale)
        ));
        let opened = fs.open(old, false, false).await.expect("the retry opens");
        let got = fs.read(opened.fh, 0, 100).await.expect("read");
        assert_eq!(&got[..], b"v2!", "at the current version");
        fs.release(opened.fh);
        tokio::time::advance(RETRY_WINDOW * 2).await;
        assert!(matches!(
            fs.open(old, false, false).await,
            Err(FsError::Stale)
        ));
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
            .readdir(fh)
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
