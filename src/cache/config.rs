//! The cache's settings and its errors: what callers configure and what they get back.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::db::DbError;
use super::index::TooLarge;
use super::layout::LayoutError;
use super::metrics::CacheMetrics;
use crate::store::StoreError;

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
    /// Size of each ranged GET of a fill.
    pub part_size: u64,
    /// Ranged GETs of one fill running at once (reads far ahead add their own).
    pub fill_concurrency: usize,
    /// Longest a read waits for its bytes before failing with EIO.
    pub read_timeout: Duration,
    /// Where first-byte latencies and download speeds are recorded (`/metrics`).
    pub metrics: CacheMetrics,
}

impl CacheConfig {
    pub const DEFAULT_MAX_SIZE_MB: u64 = 500;
    pub const DEFAULT_MAX_ENTRIES: u64 = 200;
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
    pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
    pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
    pub const DEFAULT_FILL_CONCURRENCY: usize = 8;
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

    /// A cache in `dir` with every default: the base the settings of a mount, a command
    /// or a test change what they need of (`CacheConfig { max_entries: 5, ..at(dir) }`).
    pub fn at(dir: impl Into<PathBuf>) -> CacheConfig {
        CacheConfig {
            enabled: true,
            dir: dir.into(),
            max_size: Self::DEFAULT_MAX_SIZE_MB << 20,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            ttl: Self::DEFAULT_TTL,
            validate_etag: true,
            profile: "default".into(),
            sweep_interval: Self::DEFAULT_SWEEP_INTERVAL,
            part_size: Self::DEFAULT_PART_SIZE,
            fill_concurrency: Self::DEFAULT_FILL_CONCURRENCY,
            read_timeout: Self::DEFAULT_READ_TIMEOUT,
            metrics: CacheMetrics::default(),
        }
    }

    /// Longest S3 is waited for when a known answer can be served instead: the ETag
    /// check of a cached copy (or of a download under way), or listing again a directory
    /// listed before.
    pub fn check_within(&self) -> Duration {
        Self::CHECK_TIMEOUT.min(self.read_timeout)
    }

    const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

    /// The TTL in the index's unit.
    pub(crate) fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis().min(u64::MAX as u128) as u64
    }
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
    /// A download ahead of use found no room without evicting.
    #[error("no room for {0} bytes without evicting")]
    NoRoom(u64),
    /// No room now: what is left is held by downloads under way.
    #[error("no room for {0} bytes now: the rest is held by downloads under way")]
    Full(u64),
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
