//! The operating commands `s3cachefs stats`, `clear` and `warm`: each works on a live mount
//! (through its `.cache-stats` file, its files, or its control socket) or, when nothing is
//! mounted, on the cache directory itself. `unmount` waits for the mount's process.
//! `shared gc` bounds a shared cache tier.

pub mod clear;
pub mod locate;
pub mod shared;
pub mod stats;
pub mod unmount;
pub mod warm;

use std::path::PathBuf;
use std::time::Duration;

use crate::cache::inspect::InspectError;
use crate::cache::{CacheConfig, CacheError};
use crate::control::ControlError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotAMount(String),
    /// Asked to warm a path in a mount that keeps nothing.
    #[error(
        "{path}: the mount at {root} runs with the cache off (--no-cache or \
         CACHE_ENABLED=false): nothing read there is kept, so nothing is warmed"
    )]
    CacheOff { path: PathBuf, root: PathBuf },
    #[error("{} is not mounted", .0.display())]
    NotMounted(PathBuf),
    #[error("{} is busy: {}", .path.display(), unmount::busy_with(.path, .holders))]
    Busy {
        path: PathBuf,
        holders: Vec<unmount::Holder>,
    },
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    // The io::Error is in the message and deliberately not a `source`, so `{:#}` does
    // not print it twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    Other(String),
}

/// Size and entry limits of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes.
    pub max_size: u64,
    pub max_entries: u64,
}

/// The configuration of a cache opened by a command rather than by a mount: same
/// directory, limits and key profile as a mount with the same settings would use.
pub fn cache_config(dir: PathBuf, limits: Limits, ttl: Duration, profile: String) -> CacheConfig {
    CacheConfig {
        max_size: limits.max_size,
        max_entries: limits.max_entries,
        ttl,
        profile,
        ..CacheConfig::at(dir)
    }
}

/// `1 entry`, `2 entries`: a count with its noun, singular for one.
pub fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `3725` s → `1h 2m`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(count(0, "entry", "entries"), "0 entries");
        assert_eq!(count(1, "entry", "entries"), "1 entry");
        assert_eq!(count(2, "miss", "misses"), "2 misses");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(500 << 20), "500.0 MiB");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3725), "1h 2m");
        assert_eq!(human_duration(90_000), "1d 1h");
    }
}
