//! The filesystem layer's vocabulary, shared by its parts and with `fuse.rs`: the fixed
//! inode numbers, the settings, what the mount shows at its root, attributes, directory
//! entries, and what an open returns.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const ROOT_INO: u64 = 1;
pub const STATS_INO: u64 = 2;
pub const STATS_NAME: &str = ".cache-stats";

/// How long a listing or HEAD result is trusted.
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(60);
/// Files of a directory fetched ahead of a reader going through it in order.
pub const DEFAULT_READAHEAD_FILES: usize = 8;
/// Permission bits shown for files and directories.
pub const DEFAULT_FILE_MODE: u16 = 0o444;
pub const DEFAULT_DIR_MODE: u16 = 0o555;

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
    /// Where read latencies are recorded (`/metrics`).
    pub read_metrics: super::ReadMetrics,
    /// Where `/metrics` is served, shown in `.cache-stats` (the port may have been
    /// chosen at random: `--metrics-addr 127.0.0.1:0`).
    pub metrics_addr: Option<std::net::SocketAddr>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes as the filesystem layer reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// One entry of a directory as `readdir` returns it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// What the mount shows at its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Every bucket the credentials can list, one directory each.
    AllBuckets,
    /// One bucket, or a prefix of it (always ending in `/` when not empty).
    Bucket { bucket: String, prefix: String },
}

/// What `statfs` reports: the cache, so `df` on the mount shows how full it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}
