//! What the cache records for `/metrics`: how long a cold open waits for its first byte,
//! and how fast downloads into the cache go. As in `store/metrics.rs`, the families live
//! with the code that fills them and the default recorder records nothing.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::store::BucketLabels;
use crate::store::metrics::REMOTE_LATENCY_BUCKETS;

/// Downloads smaller than this are left out of the throughput histogram: their time is
/// the round trip, not the transfer, and would only say how small they are.
pub const MIN_THROUGHPUT_SIZE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TierLabels {
    bucket: String,
    tier: &'static str,
}

type HistogramFamily = Family<TierLabels, Histogram, fn() -> Histogram>;

fn first_byte() -> Histogram {
    Histogram::new(REMOTE_LATENCY_BUCKETS)
}

/// 256 KiB/s to 8 GiB/s, doubling.
fn throughput() -> Histogram {
    Histogram::new(exponential_buckets(256.0 * 1024.0, 2.0, 16))
}

#[derive(Debug)]
struct Families {
    first_byte: HistogramFamily,
    throughput: HistogramFamily,
    buckets: Arc<BucketLabels>,
}

/// Where the cache records its downloads (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics(Option<Arc<Families>>);

impl CacheMetrics {
    pub fn new(buckets: Arc<BucketLabels>) -> CacheMetrics {
        CacheMetrics(Some(Arc::new(Families {
            first_byte: Family::new_with_constructor(first_byte),
            throughput: Family::new_with_constructor(throughput),
            buckets,
        })))
    }

    pub fn register(&self, registry: &mut Registry) {
        let Some(f) = &self.0 else { return };
        registry.register_with_unit(
            "first_byte_latency",
            "Cold opens (a miss that starts a download into the cache): time from the open \
             to the object's first bytes on local disk, ready to be read",
            Unit::Seconds,
            f.first_byte.clone(),
        );
        registry.register_with_unit(
            "fill_throughput",
            "Downloads into the cache of 1 MiB or more: the object's size over the time \
             from its first request to its last byte",
            Unit::Other("bytes_per_second".into()),
            f.throughput.clone(),
        );
    }

    fn labels(f: &Families, bucket: &str, tier: &'static str) -> TierLabels {
        TierLabels {
            bucket: f.buckets.label(bucket),
            tier,
        }
    }

    /// A cold open's first bytes landed `waited` after the open asked for them.
    pub(crate) fn first_byte(&self, bucket: &str, tier: &'static str, waited: Duration) {
        let Some(f) = &self.0 else { return };
        f.first_byte
            .get_or_create(&Self::labels(f, bucket, tier))
            .observe(waited.as_secs_f64());
    }

    /// A download of `size` bytes completed in `took`.
    pub(crate) fn filled(&self, bucket: &str, tier: &'static str, size: u64, took: Duration) {
        let Some(f) = &self.0 else { return };
        if size < MIN_THROUGHPUT_SIZE || took.is_zero() {
            return;
        }
        f.throughput
            .get_or_create(&Self::labels(f, bucket, tier))
            .observe(size as f64 / took.as_secs_f64());
    }
}
