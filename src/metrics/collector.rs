//! The `.cache-stats` document as Prometheus series, read at each scrape: every numeric
//! field `x` becomes `s3cachefs_x` (a gauge) or `s3cachefs_x_total` (a counter). Which
//! fields are gauges is a short list; every other number only ever grows, so it is a
//! counter. Fields that are not numbers (a state name, an address) are left out.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::Value;

use crate::fs::S3Fs;

/// Fields of `.cache-stats` that go up and down (levels, limits, states, ratios);
/// true/false fields are gauges of 1/0 too.
pub const GAUGES: &[&str] = &[
    "enabled",
    "hit_rate",
    "entry_count",
    "total_size",
    "max_size",
    "max_entries",
    "downloads_in_flight",
    "s3_unreachable",
    "uptime_seconds",
    "inodes",
    "shared_uploads_pending",
];

/// What the fields of `.cache-stats` mean, for the HELP lines (units in the name or
/// here). A field missing from this list is exported all the same, with a plain help.
const HELP: &[(&str, &str)] = &[
    (
        "enabled",
        "1 when the mount has a local cache, 0 with --no-cache",
    ),
    ("hits", "Opens answered from the local cache"),
    ("misses", "Opens that had to go to S3"),
    (
        "hit_rate",
        "hits / (hits + misses) since the mount started, 0 to 1",
    ),
    ("entry_count", "Objects in the cache"),
    ("total_size", "Bytes in the cache"),
    ("max_size", "Size limit of the cache, in bytes"),
    ("max_entries", "Entry limit of the cache"),
    ("evictions", "Entries removed to stay within the limits"),
    ("expirations", "Entries found older than the TTL"),
    (
        "etag_validations",
        "HEAD requests made to check a cached copy's ETag",
    ),
    ("etag_mismatches", "Cached copies found replaced on S3"),
    (
        "stale_served",
        "Cached copies or listings served because S3 did not answer",
    ),
    (
        "corruptions",
        "Cache files whose bytes did not match their checksum",
    ),
    ("bytes_from_s3", "Bytes downloaded from S3"),
    ("bytes_from_cache", "Bytes served from the local cache"),
    ("downloads_in_flight", "Downloads into the cache under way"),
    ("errors", "Errors (EIO) returned to programs"),
    (
        "passthrough_opens",
        "Opens the kernel reads itself (FUSE passthrough)",
    ),
    ("read_requests", "Read requests s3cachefs answered itself"),
    (
        "prefetches",
        "Downloads started ahead of use (directory read-ahead)",
    ),
    ("not_kept", "Objects read but not kept, for lack of room"),
    ("downloads_failed", "Downloads into the cache that failed"),
    (
        "disk_full_events",
        "Writes to the cache that found its disk full",
    ),
    ("s3_unreachable", "1 while S3 cannot be reached"),
    ("uptime_seconds", "Seconds since the mount started"),
    ("inodes", "Inodes the mount holds"),
    (
        "shared_hits",
        "Blocks read whole from the shared cache tier",
    ),
    (
        "shared_misses",
        "Blocks asked of the shared cache tier and not there",
    ),
    (
        "shared_errors",
        "Requests to the shared cache tier that failed or were too slow",
    ),
    (
        "shared_corrupt",
        "Blocks of the shared cache tier refused: they did not check out",
    ),
    ("bytes_from_shared", "Bytes read from the shared cache tier"),
    ("shared_uploads", "Blocks uploaded to the shared cache tier"),
    (
        "shared_uploads_dropped",
        "Uploads to the shared cache tier dropped for a full queue",
    ),
    (
        "shared_uploads_pending",
        "Uploads to the shared cache tier waiting or under way",
    ),
];

pub(super) struct StatsCollector {
    fs: Arc<S3Fs>,
}

impl StatsCollector {
    pub(super) fn new(fs: Arc<S3Fs>) -> StatsCollector {
        StatsCollector { fs }
    }
}

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsCollector")
    }
}

/// One field as a series: what kind, and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Series {
    Counter(u64),
    CounterF(f64),
    Gauge(i64),
    GaugeF(f64),
}

/// What `name: value` of `.cache-stats` is exported as, if anything.
pub(super) fn series(name: &str, value: &Value) -> Option<Series> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return None;
    }
    let gauge = GAUGES.contains(&name);
    match value {
        Value::Bool(b) => Some(Series::Gauge(i64::from(*b))),
        Value::Number(n) if gauge => match n.as_i64() {
            Some(i) => Some(Series::Gauge(i)),
            None => n.as_f64().map(Series::GaugeF),
        },
        Value::Number(n) => match n.as_u64() {
            Some(u) => Some(Series::Counter(u)),
            // A counter never goes below zero; a negative one is no counter.
            None => n.as_f64().filter(|f| *f >= 0.0).map(Series::CounterF),
        },
        _ => None,
    }
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Value::Object(doc) = self.fs.stats_value() else {
            return Ok(());
        };
        for (name, value) in &doc {
            let Some(s) = series(name, value) else {
                continue;
            };
            let help = match HELP.iter().find(|(n, _)| n == name) {
                Some((_, h)) => format!("{h} (`{name}` of .cache-stats)"),
                None => format!("`{name}` of .cache-stats"),
            };
            // The encoder adds `_total` to counters.
            let name = match s {
                Series::Counter(_) | Series::CounterF(_) => {
                    name.strip_suffix("_total").unwrap_or(name)
                }
                _ => name,
            };
            match s {
                Series::Counter(v) => encode(&mut encoder, name, &help, ConstCounter::new(v))?,
                Series::CounterF(v) => encode(&mut encoder, name, &help, ConstCounter::new(v))?,
                Series::Gauge(v) => encode(&mut encoder, name, &help, ConstGauge::new(v))?,
                Series::GaugeF(v) => encode(&mut encoder, name, &help, ConstGauge::new(v))?,
            }
        }
        Ok(())
    }
}

fn encode(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counters_gauges_and_what_is_left_out() {
        assert_eq!(series("hits", &json!(3)), Some(Series::Counter(3)));
        assert_eq!(series("hit_rate", &json!(0.5)), Some(Series::GaugeF(0.5)));
        assert_eq!(series("entry_count", &json!(7)), Some(Series::Gauge(7)));
        assert_eq!(series("enabled", &json!(true)), Some(Series::Gauge(1)));
        // A counter added later to .cache-stats needs no change here.
        assert_eq!(series("shared_hits", &json!(9)), Some(Series::Counter(9)));
        assert_eq!(series("shared_state", &json!("up")), None);
        assert_eq!(series("metrics_addr", &json!("127.0.0.1:9")), None);
        assert_eq!(series("bad-name", &json!(1)), None);
        assert_eq!(series("odd", &json!(-1)), None);
    }
}
