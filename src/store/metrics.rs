//! What the store records for `/metrics`: the latency of every S3 request attempt by
//! operation and outcome, retries and throttling. The families live here, with the code
//! that fills them, so no layer below `metrics` needs to know about the exporter; the
//! exporter only registers them (`register`).
//!
//! Recorders are cheap handles: the default one records nothing, so code paths and tests
//! that never asked for metrics pay one branch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::StoreError;

/// Upper bounds of the latency histograms of requests to a remote store, in seconds:
/// from a fast local server (half a millisecond) to a request near its deadline.
pub const REMOTE_LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `tier` label of requests to S3 itself (the other values: `local` for the cache's
/// disk, `shared` for a shared cache tier).
pub const ORIGIN: &str = "origin";
/// The `tier` label of bytes served from the cache's own disk.
pub const LOCAL: &str = "local";
/// The `tier` label of requests to (and bytes from) a shared cache tier.
pub const SHARED: &str = "shared";

/// What a request asked S3 for, as the `op` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// HeadObject, HeadBucket.
    Head,
    /// GetObject (ranged or whole).
    Get,
    /// ListObjectsV2, ListBuckets.
    List,
    /// PutObject (the shared cache tier's uploads).
    Put,
    /// DeleteObjects (the shared cache tier's corrupt blocks, `shared gc`).
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Head => "HEAD",
            Op::Get => "GET",
            Op::List => "LIST",
            Op::Put => "PUT",
            Op::Delete => "DELETE",
        }
    }
}

/// How one attempt ended, as the `outcome` label says it: a small fixed set, so the
/// label stays bounded whatever a server answers.
fn outcome(r: Result<(), &StoreError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(StoreError::NotFound(_)) => "not_found",
        Err(StoreError::AccessDenied(_)) => "denied",
        Err(StoreError::PreconditionFailed(_)) => "changed",
        Err(StoreError::Throttled(_)) => "throttled",
        Err(StoreError::Transient(_)) => "transient",
        Err(StoreError::NoAnswer(_) | StoreError::Unavailable(_)) => "no_answer",
        Err(StoreError::NoCredentials(_)) => "no_credentials",
        Err(StoreError::Other(_)) => "error",
    }
}

/// Keeps the `bucket` label bounded: a mount of one bucket labels only that bucket (any
/// other, e.g. one named by `warm s3://...`, is `other`); a mount of every bucket labels
/// each bucket it reads, up to [`BucketLabels::MAX`], then `other`.
#[derive(Debug, Default)]
pub struct BucketLabels {
    only: Option<String>,
    seen: Mutex<HashSet<String>>,
}

impl BucketLabels {
    /// More buckets than any dashboard would show one by one.
    pub const MAX: usize = 200;
    pub const OTHER: &str = "other";

    /// `only`: the bucket of a one-bucket mount; `None` for a mount of every bucket.
    pub fn new(only: Option<String>) -> BucketLabels {
        BucketLabels {
            only,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The label value for `bucket` ("" for requests of no bucket, e.g. ListBuckets).
    pub fn label(&self, bucket: &str) -> String {
        if bucket.is_empty() {
            return String::new();
        }
        match &self.only {
            Some(b) if b == bucket => bucket.to_string(),
            Some(_) => Self::OTHER.to_string(),
            None => {
                let mut seen = self.seen.lock();
                if seen.contains(bucket) || seen.len() < Self::MAX {
                    seen.insert(bucket.to_string());
                    bucket.to_string()
                } else {
                    Self::OTHER.to_string()
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    tier: &'static str,
    bucket: String,
    op: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    tier: &'static str,
    bucket: String,
    op: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn remote_latency() -> Histogram {
    Histogram::new(REMOTE_LATENCY_BUCKETS)
}

#[derive(Debug)]
struct Families {
    latency: HistogramFamily<RequestLabels>,
    retries: Family<OpLabels, Counter>,
    throttles: Family<OpLabels, Counter>,
    buckets: Arc<BucketLabels>,
}

/// Where an [`super::S3Store`] records its requests (see the module docs).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    families: Option<Arc<Families>>,
    tier: &'static str,
}

impl Default for StoreMetrics {
    /// Records nothing.
    fn default() -> Self {
        StoreMetrics {
            families: None,
            tier: ORIGIN,
        }
    }
}

impl StoreMetrics {
    /// A recorder for requests to S3 (`tier="origin"`).
    pub fn new(buckets: Arc<BucketLabels>) -> StoreMetrics {
        StoreMetrics {
            families: Some(Arc::new(Families {
                latency: Family::new_with_constructor(remote_latency),
                retries: Family::default(),
                throttles: Family::default(),
                buckets,
            })),
            tier: ORIGIN,
        }
    }

    /// The same families for another store, e.g. a shared cache tier: one set of metric
    /// names, told apart by the `tier` label.
    pub fn for_tier(&self, tier: &'static str) -> StoreMetrics {
        StoreMetrics {
            families: self.families.clone(),
            tier,
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let Some(f) = &self.families else { return };
        registry.register_with_unit(
            "s3_request_latency",
            "Time of each attempt of a request to the store, up to its answer's headers \
             (a GET's body is not included), by operation and outcome",
            Unit::Seconds,
            f.latency.clone(),
        );
        registry.register(
            "s3_retries",
            "Attempts of a request made again after a throttled, failed or unanswered one",
            f.retries.clone(),
        );
        registry.register(
            "s3_throttles",
            "Attempts answered 429 or 503 SlowDown",
            f.throttles.clone(),
        );
    }

    fn op_labels(&self, f: &Families, op: Op, bucket: Option<&str>) -> OpLabels {
        OpLabels {
            tier: self.tier,
            bucket: f.buckets.label(bucket.unwrap_or("")),
            op: op.as_str(),
        }
    }

    /// One attempt sent to the store and how it ended.
    pub(crate) fn attempt(
        &self,
        op: Op,
        bucket: Option<&str>,
        took: Duration,
        result: Result<(), &StoreError>,
    ) {
        let Some(f) = &self.families else { return };
        let OpLabels { tier, bucket, op } = self.op_labels(f, op, bucket);
        if matches!(result, Err(StoreError::Throttled(_))) {
            f.throttles
                .get_or_create(&OpLabels {
                    tier,
                    bucket: bucket.clone(),
                    op,
                })
                .inc();
        }
        f.latency
            .get_or_create(&RequestLabels {
                tier,
                bucket,
                op,
                outcome: outcome(result),
            })
            .observe(took.as_secs_f64());
    }

    /// A request about to be tried again.
    pub(crate) fn retry(&self, op: Op, bucket: Option<&str>) {
        let Some(f) = &self.families else { return };
        f.retries
            .get_or_create(&self.op_labels(f, op, bucket))
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_labels_stay_bounded() {
        let one = BucketLabels::new(Some("media".into()));
        assert_eq!(one.label("media"), "media");
        assert_eq!(one.label("elsewhere"), BucketLabels::OTHER);
        assert_eq!(one.label(""), "");
        let all = BucketLabels::new(None);
        for i in 0..BucketLabels::MAX {
            assert_eq!(all.label(&format!("b{i}")), format!("b{i}"));
        }
        assert_eq!(all.label("one-too-many"), BucketLabels::OTHER);
        assert_eq!(all.label("b0"), "b0", "buckets seen keep their label");
    }
}
