//! What the filesystem records for `/metrics`: the latency of the reads it answers, for
//! files opened as a hit and as a miss. Reads of passthrough opens never reach s3cachefs
//! (the kernel reads the cache file itself), so they are not in it.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::cache::Outcome;
use crate::store::BucketLabels;

/// 10 µs (a pread of a page-cached block) to 10 s (a read waiting on a slow S3).
const READ_LATENCY_BUCKETS: [f64; 18] = [
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReadLabels {
    bucket: String,
    result: &'static str,
    tier: &'static str,
}

fn read_latency() -> Histogram {
    Histogram::new(READ_LATENCY_BUCKETS)
}

#[derive(Debug)]
struct Families {
    reads: Family<ReadLabels, Histogram, fn() -> Histogram>,
    buckets: Arc<BucketLabels>,
}

/// Where the filesystem records its reads; the default one records nothing.
#[derive(Debug, Clone, Default)]
pub struct ReadMetrics(Option<Arc<Families>>);

impl ReadMetrics {
    pub fn new(buckets: Arc<BucketLabels>) -> ReadMetrics {
        ReadMetrics(Some(Arc::new(Families {
            reads: Family::new_with_constructor(read_latency),
            buckets,
        })))
    }

    pub fn register(&self, registry: &mut Registry) {
        let Some(f) = &self.0 else { return };
        registry.register_with_unit(
            "read_latency",
            "Reads answered by s3cachefs (not those the kernel serves itself through FUSE \
             passthrough), from the request to its bytes: result=hit for files opened from \
             the cache, miss for those being downloaded or read from S3",
            Unit::Seconds,
            f.reads.clone(),
        );
    }

    /// The histogram the reads of one open file go to, looked up once per open so that
    /// a read costs only the observation.
    /// `tier`: where the open's bytes come from (see `ObjectHandle::tier`).
    pub(super) fn for_open(&self, bucket: &str, outcome: Outcome, tier: &'static str) -> ReadTimer {
        let Some(f) = &self.0 else {
            return ReadTimer(None);
        };
        let result = match outcome {
            Outcome::Hit | Outcome::StaleHit => "hit",
            Outcome::Miss | Outcome::Direct => "miss",
        };
        let labels = ReadLabels {
            bucket: f.buckets.label(bucket),
            result,
            tier,
        };
        ReadTimer(Some(f.reads.get_or_create_owned(&labels)))
    }
}

/// Times the reads of one open file (nothing when metrics are off).
#[derive(Clone)]
pub(super) struct ReadTimer(Option<Histogram>);

impl ReadTimer {
    pub(super) fn start(&self) -> Option<Instant> {
        self.0.as_ref().map(|_| Instant::now())
    }

    pub(super) fn done(&self, started: Option<Instant>) {
        if let (Some(h), Some(t)) = (&self.0, started) {
            h.observe(t.elapsed().as_secs_f64());
        }
    }
}
