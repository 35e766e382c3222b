//! `s3cachefs stats`: the `.cache-stats` document of a live mount, or what the index of an
//! unmounted cache directory holds, as a short human summary or as raw JSON.
//!
//! For a cache directory nobody has mounted, the JSON has the fields of `.cache-stats`
//! that the index on disk can answer: `entry_count`, `total_size`, `max_size` and
//! `max_entries` (the limits of your settings: flags, environment or defaults, since a
//! cache directory does not record them), plus `cache_dir`, `mounted` (false) and
//! `clean_shutdown`. The counters (`hits`, `misses`, `hit_rate`, `evictions`,
//! `bytes_from_cache`, ...) live only in a running mount's memory and are left out rather
//! than shown as zeros.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::locate;
use super::{AdminError, Limits, count, human_bytes, human_duration};
use crate::cache::inspect::{self, InspectError};

/// What to report on.
#[derive(Debug, Clone)]
pub enum StatsTarget {
    /// A mountpoint or any path in a mount.
    Mount(PathBuf),
    /// A cache directory, with the limits to compare with if nothing has it mounted.
    CacheDir { dir: PathBuf, limits: Limits },
}

/// Where the numbers came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A live mount's counters.
    Mount { mountpoint: PathBuf },
    /// The index of a cache directory nobody has mounted.
    Dir { dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Report {
    pub origin: Origin,
    /// The document as `--json` prints it: `.cache-stats` exactly as the mount wrote it, or
    /// the fields a bare directory can answer (see the module docs).
    pub json: String,
    pub doc: Value,
}

pub async fn collect(target: &StatsTarget) -> Result<Report, AdminError> {
    match target {
        StatsTarget::Mount(path) => {
            let root = locate::mount_root(path)?;
            let (json, doc) = locate::read_stats(&root)?;
            Ok(Report {
                origin: Origin::Mount { mountpoint: root },
                json,
                doc,
            })
        }
        StatsTarget::CacheDir { dir, limits } => {
            let dir = dir.clone();
            let inspected = {
                let d = dir.clone();
                // redb reads the whole index: blocking work.
                tokio::task::spawn_blocking(move || inspect::inspect(&d))
                    .await
                    .map_err(|e| AdminError::Other(e.to_string()))?
            };
            match inspected {
                Ok(s) => {
                    let doc = json!({
                        "mounted": false,
                        "cache_dir": s.dir,
                        "entry_count": s.entry_count,
                        "total_size": s.total_size,
                        "max_size": limits.max_size,
                        "max_entries": limits.max_entries,
                        "clean_shutdown": s.clean,
                    });
                    Ok(Report {
                        origin: Origin::Dir { dir: s.dir },
                        json: pretty(&doc),
                        doc,
                    })
                }
                Err(InspectError::InUse { dir, holder }) => {
                    // A mount holds the directory: ask it.
                    match locate::connect_cache_dir(&dir).await {
                        Some((_, status)) => Ok(Report {
                            origin: Origin::Mount {
                                mountpoint: status.mountpoint,
                            },
                            json: pretty(&status.stats),
                            doc: status.stats,
                        }),
                        None => Err(AdminError::NotAMount(format!(
                            "cache directory {} is in use by a running s3cachefs mount{holder} \
                             that does not answer on {}; run `s3cachefs stats MOUNTPOINT`",
                            dir.display(),
                            crate::control::socket_path(&dir).display()
                        ))),
                    }
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return String::new();
    }
    format!(" ({:.0}%)", part as f64 / whole as f64 * 100.0)
}

/// The human summary: hit rate, size used of the limit, entries of the limit, evictions
/// and bytes saved (read from the cache instead of S3).
pub fn render(report: &Report) -> String {
    let d = &report.doc;
    let mut out = Lines::default();
    match &report.origin {
        Origin::Mount { mountpoint } => {
            out.head(format!(
                "s3cachefs mount at {} (up {})",
                mountpoint.display(),
                human_duration(num(d, "uptime_seconds"))
            ));
            if num(d, "s3_unreachable") > 0 {
                out.line(
                    "S3",
                    "unreachable: cached files and listed directories are served, other \
                     reads fail at once; checked again every 2 s"
                        .into(),
                );
            }
            // No sizes, limits or hit rate: with nothing kept they would all read zero.
            if locate::cache_off(d) {
                out.line(
                    "cache",
                    "off: every read goes straight to S3 and nothing is kept \
                     (--no-cache or CACHE_ENABLED=false)"
                        .into(),
                );
                out.line("from S3", human_bytes(num(d, "bytes_from_s3")));
                out.nonzero(d, "errors", "errors");
                return out.text;
            }
            out.hit_rate(d);
            out.usage(d);
            out.mount_counters(d);
        }
        Origin::Dir { dir } => {
            out.head(format!(
                "s3cachefs cache at {} (not mounted)",
                dir.display()
            ));
            out.usage(d);
            out.text.push_str(
                "  hit rate, evictions and bytes saved are counted by a running mount: \
                 `s3cachefs stats MOUNTPOINT`\n",
            );
            if d.get("clean_shutdown").and_then(Value::as_bool) == Some(false) {
                out.text.push_str(
                    "  the last mount did not shut down cleanly: the next one re-checks \
                     cached files before using them\n",
                );
            }
        }
    }
    out.text
}

/// A counter of the document; a missing one reads 0 (a cache directory has none).
fn num(d: &Value, k: &str) -> u64 {
    d.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// The summary being written: a heading, then `label  value` lines.
#[derive(Default)]
struct Lines {
    text: String,
}

impl Lines {
    fn head(&mut self, h: String) {
        self.text.push_str(&h);
        self.text.push('\n');
    }

    fn line(&mut self, label: &str, value: String) {
        self.text.push_str(&format!("  {label:<12} {value}\n"));
    }

    /// A line only when the counter is not zero.
    fn nonzero(&mut self, d: &Value, label: &str, k: &str) {
        if num(d, k) > 0 {
            self.line(label, num(d, k).to_string());
        }
    }

    fn hit_rate(&mut self, d: &Value) {
        let rate = d.get("hit_rate").and_then(Value::as_f64).unwrap_or(0.0);
        self.line(
            "hit rate",
            format!(
                "{:.1}% ({}, {})",
                rate * 100.0,
                count(num(d, "hits"), "hit", "hits"),
                count(num(d, "misses"), "miss", "misses")
            ),
        );
    }

    /// Size and entries against their limits.
    fn usage(&mut self, d: &Value) {
        let (size, max_size) = (num(d, "total_size"), num(d, "max_size"));
        let (entries, max_entries) = (num(d, "entry_count"), num(d, "max_entries"));
        self.line(
            "size",
            format!(
                "{} of {}{}",
                human_bytes(size),
                human_bytes(max_size),
                percent(size, max_size)
            ),
        );
        self.line(
            "entries",
            format!(
                "{entries} of {max_entries}{}",
                percent(entries, max_entries)
            ),
        );
    }

    fn mount_counters(&mut self, d: &Value) {
        self.line("evictions", num(d, "evictions").to_string());
        self.line(
            "bytes saved",
            format!(
                "{} read from the cache instead of S3 ({} from S3)",
                human_bytes(num(d, "bytes_from_cache")),
                human_bytes(num(d, "bytes_from_s3"))
            ),
        );
        // What needs attention, only when it happened.
        self.nonzero(d, "not kept", "not_kept");
        self.nonzero(d, "disk full", "disk_full_events");
        self.nonzero(d, "corruptions", "corruptions");
        self.nonzero(d, "stale served", "stale_served");
        self.nonzero(d, "errors", "errors");
        self.shared_tier(d);
    }

    /// The shared tier's lines, when the mount has one.
    fn shared_tier(&mut self, d: &Value) {
        let state = d
            .get("shared_state")
            .and_then(Value::as_str)
            .unwrap_or("off");
        if state == "off" {
            return;
        }
        self.line(
            "shared tier",
            format!(
                "{state}: {} ({}, {}) given, {} from the origin uploaded",
                human_bytes(num(d, "bytes_from_shared")),
                count(num(d, "shared_hits"), "block", "blocks"),
                count(num(d, "shared_misses"), "miss", "misses"),
                count(num(d, "shared_uploads"), "block", "blocks"),
            ),
        );
        let troubles = [
            (num(d, "shared_errors"), "error", "errors"),
            (
                num(d, "shared_corrupt"),
                "corrupt block refused",
                "corrupt blocks refused",
            ),
            (
                num(d, "shared_uploads_dropped"),
                "upload dropped",
                "uploads dropped",
            ),
        ];
        let said: Vec<String> = troubles
            .iter()
            .filter(|(n, ..)| *n > 0)
            .map(|(n, one, many)| count(*n, one, many))
            .collect();
        if !said.is_empty() {
            self.line("", said.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report of a mount at /mnt/s3 whose `.cache-stats` is `doc`.
    fn mount_report(doc: Value) -> Report {
        Report {
            origin: Origin::Mount {
                mountpoint: "/mnt/s3".into(),
            },
            json: pretty(&doc),
            doc,
        }
    }

    #[test]
    fn summary_of_a_live_mount() {
        let doc = json!({
            "enabled": true, "hits": 7, "misses": 1, "hit_rate": 0.875,
            "entry_count": 3, "total_size": 3 << 20, "max_size": 500u64 << 20,
            "max_entries": 200, "evictions": 2, "bytes_from_cache": 7u64 << 20,
            "bytes_from_s3": 1u64 << 20, "uptime_seconds": 3725, "errors": 0
        });
        let s = render(&mount_report(doc));
        assert!(s.contains("/mnt/s3 (up 1h 2m)"), "{s}");
        assert!(s.contains("87.5% (7 hits, 1 miss)"), "{s}");
        assert!(s.contains("3.0 MiB of 500.0 MiB (1%)"), "{s}");
        assert!(s.contains("3 of 200 (2%)"), "{s}");
        assert!(s.contains("evictions    2"), "{s}");
        assert!(s.contains("7.0 MiB read from the cache"), "{s}");
        assert!(!s.contains("errors"), "{s}");
        assert!(!s.contains("shared tier"), "{s}");
    }

    #[test]
    fn summary_shows_the_shared_tier_when_there_is_one() {
        let doc = json!({
            "enabled": true, "hits": 0, "misses": 1, "hit_rate": 0.0,
            "entry_count": 1, "total_size": 1024, "max_size": 500u64 << 20,
            "max_entries": 200, "uptime_seconds": 5, "shared_state": "ok",
            "shared_hits": 8, "shared_misses": 1, "bytes_from_shared": 64u64 << 20,
            "shared_uploads": 1, "shared_corrupt": 1, "shared_errors": 0
        });
        let s = render(&mount_report(doc));
        assert!(
            s.contains("shared tier  ok: 64.0 MiB (8 blocks, 1 miss) given, 1 block from the origin uploaded"),
            "{s}"
        );
        assert!(s.contains("1 corrupt block refused"), "{s}");
        assert!(!s.contains("error"), "{s}");
    }

    #[test]
    fn summary_says_when_s3_is_unreachable_and_what_went_wrong() {
        let doc = json!({
            "enabled": true, "hits": 1, "misses": 0, "hit_rate": 1.0,
            "entry_count": 1, "total_size": 1024, "max_size": 500u64 << 20,
            "max_entries": 200, "evictions": 0, "bytes_from_cache": 1024,
            "bytes_from_s3": 0, "uptime_seconds": 5, "errors": 2, "s3_unreachable": 1,
            "disk_full_events": 1, "corruptions": 0, "not_kept": 3, "stale_served": 4
        });
        let s = render(&mount_report(doc));
        assert!(s.contains("S3           unreachable"), "{s}");
        assert!(s.contains("not kept     3"), "{s}");
        assert!(s.contains("disk full    1"), "{s}");
        assert!(s.contains("stale served 4"), "{s}");
        assert!(s.contains("errors       2"), "{s}");
        assert!(!s.contains("corruptions"), "{s}");
    }

    #[test]
    fn summary_of_a_mount_with_the_cache_off_says_so() {
        let doc = json!({
            "enabled": false, "hits": 0, "misses": 2, "hit_rate": 0.0,
            "entry_count": 0, "total_size": 0, "max_size": 500u64 << 20,
            "max_entries": 200, "evictions": 0, "bytes_from_cache": 0,
            "bytes_from_s3": 2048, "uptime_seconds": 5, "errors": 1
        });
        let s = render(&mount_report(doc));
        assert!(
            s.contains("cache        off: every read goes straight to S3"),
            "{s}"
        );
        assert!(s.contains("from S3      2.0 KiB"), "{s}");
        assert!(s.contains("errors       1"), "{s}");
        assert!(!s.contains("500.0 MiB") && !s.contains("hit rate"), "{s}");
    }

    #[test]
    fn summary_of_a_bare_directory_has_no_counters() {
        let doc = json!({
            "mounted": false, "cache_dir": "/c", "entry_count": 1, "total_size": 10,
            "max_size": 100, "max_entries": 4, "clean_shutdown": false
        });
        let r = Report {
            origin: Origin::Dir { dir: "/c".into() },
            json: pretty(&doc),
            doc,
        };
        let s = render(&r);
        assert!(s.contains("/c (not mounted)"), "{s}");
        assert!(s.contains("10 B of 100 B (10%)"), "{s}");
        assert!(s.contains("1 of 4 (25%)"), "{s}");
        assert!(!s.contains("hit rate  "), "{s}");
        assert!(s.contains("did not shut down cleanly"), "{s}");
    }
}
