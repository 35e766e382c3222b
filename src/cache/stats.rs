//! Counters behind `.cache-stats`: lock-free, bumped from any thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::shared::SharedSnapshot;

#[derive(Debug)]
pub struct Stats {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) expirations: AtomicU64,
    pub(crate) etag_validations: AtomicU64,
    pub(crate) etag_mismatches: AtomicU64,
    /// Cached copies served because validation failed for a transient reason.
    pub(crate) stale_served: AtomicU64,
    /// Cache files whose bytes no longer matched their checksum.
    pub(crate) corruptions: AtomicU64,
    pub bytes_from_s3: AtomicU64,
    pub(crate) bytes_from_cache: AtomicU64,
    pub(crate) downloads_in_flight: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Opens of complete cache files handed to the kernel (FUSE passthrough): their
    /// reads never reach s3cachefs, so their whole size counts as bytes_from_cache.
    pub(crate) passthrough_opens: AtomicU64,
    /// Read requests s3cachefs answered itself.
    pub(crate) read_requests: AtomicU64,
    /// Downloads started ahead of use (directory read-ahead).
    pub(crate) prefetches: AtomicU64,
    /// Objects read but not kept for lack of room: larger than the cache (or than the
    /// disk can take), no room beside downloads under way, or the disk filled up.
    pub(crate) not_kept: AtomicU64,
    /// Downloads into the cache that failed (network, S3 or local disk trouble); their
    /// reads went to S3 directly.
    pub(crate) downloads_failed: AtomicU64,
    /// Writes to the cache that found its disk full (ENOSPC, EDQUOT).
    pub(crate) disk_full_events: AtomicU64,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
            etag_validations: AtomicU64::new(0),
            etag_mismatches: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            corruptions: AtomicU64::new(0),
            bytes_from_s3: AtomicU64::new(0),
            bytes_from_cache: AtomicU64::new(0),
            downloads_in_flight: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            passthrough_opens: AtomicU64::new(0),
            read_requests: AtomicU64::new(0),
            prefetches: AtomicU64::new(0),
            not_kept: AtomicU64::new(0),
            downloads_failed: AtomicU64::new(0),
            disk_full_events: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The document `.cache-stats` shows (field names are a contract: `../shared/DESIGN.md`, beside this repository, and the README).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsSnapshot {
    pub enabled: bool,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
    pub entry_count: u64,
    pub total_size: u64,
    pub max_size: u64,
    pub max_entries: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub etag_validations: u64,
    pub etag_mismatches: u64,
    pub stale_served: u64,
    pub corruptions: u64,
    pub bytes_from_s3: u64,
    pub bytes_from_cache: u64,
    pub downloads_in_flight: u64,
    pub errors: u64,
    pub passthrough_opens: u64,
    pub read_requests: u64,
    /// Absent from documents of older versions (as every field below).
    #[serde(default)]
    pub prefetches: u64,
    #[serde(default)]
    pub not_kept: u64,
    #[serde(default)]
    pub downloads_failed: u64,
    #[serde(default)]
    pub disk_full_events: u64,
    /// 1 while S3 cannot be reached (requests fail at once, cached files are served).
    #[serde(default)]
    pub s3_unreachable: u64,
    /// The shared cache tier (all 0 and "off" without one): blocks read from it whole,
    /// asked and absent, failed or too slow, refused as corrupt; bytes it gave; blocks
    /// uploaded, dropped for a full queue, and waiting to be uploaded.
    #[serde(default)]
    pub shared_hits: u64,
    #[serde(default)]
    pub shared_misses: u64,
    #[serde(default)]
    pub shared_errors: u64,
    #[serde(default)]
    pub shared_corrupt: u64,
    #[serde(default)]
    pub bytes_from_shared: u64,
    #[serde(default)]
    pub shared_uploads: u64,
    #[serde(default)]
    pub shared_uploads_dropped: u64,
    #[serde(default)]
    pub shared_uploads_pending: u64,
    /// ok, unreachable, read-only or off.
    #[serde(default = "shared_off")]
    pub shared_state: String,
    pub uptime_seconds: u64,
}

fn shared_off() -> String {
    "off".into()
}

/// What the counters do not know: the cache's current levels and limits, S3's state and
/// the shared tier's.
#[derive(Debug, Clone, Default)]
pub struct Levels {
    pub enabled: bool,
    pub entry_count: u64,
    pub total_size: u64,
    pub max_size: u64,
    pub max_entries: u64,
    pub s3_unreachable: bool,
    pub shared: Option<SharedSnapshot>,
}

impl Stats {
    pub(crate) fn snapshot(&self, levels: Levels) -> StatsSnapshot {
        let Levels {
            enabled,
            entry_count,
            total_size,
            max_size,
            max_entries,
            s3_unreachable,
            shared,
        } = levels;
        let sh = shared.unwrap_or(SharedSnapshot {
            state: "off",
            ..SharedSnapshot::default()
        });
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let hits = get(&self.hits);
        let misses = get(&self.misses);
        let lookups = hits + misses;
        StatsSnapshot {
            enabled,
            hits,
            misses,
            hit_rate: if lookups == 0 {
                0.0
            } else {
                (hits as f64 / lookups as f64 * 10_000.0).round() / 10_000.0
            },
            entry_count,
            total_size,
            max_size,
            max_entries,
            evictions: get(&self.evictions),
            expirations: get(&self.expirations),
            etag_validations: get(&self.etag_validations),
            etag_mismatches: get(&self.etag_mismatches),
            stale_served: get(&self.stale_served),
            corruptions: get(&self.corruptions),
            bytes_from_s3: get(&self.bytes_from_s3),
            bytes_from_cache: get(&self.bytes_from_cache),
            downloads_in_flight: get(&self.downloads_in_flight),
            errors: get(&self.errors),
            passthrough_opens: get(&self.passthrough_opens),
            read_requests: get(&self.read_requests),
            prefetches: get(&self.prefetches),
            not_kept: get(&self.not_kept),
            downloads_failed: get(&self.downloads_failed),
            disk_full_events: get(&self.disk_full_events),
            s3_unreachable: u64::from(s3_unreachable),
            shared_hits: sh.hits,
            shared_misses: sh.misses,
            shared_errors: sh.errors,
            shared_corrupt: sh.corrupt,
            bytes_from_shared: sh.bytes,
            shared_uploads: sh.uploads,
            shared_uploads_dropped: sh.uploads_dropped,
            shared_uploads_pending: sh.uploads_pending,
            shared_state: sh.state.to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
        }
    }
}
