//! Prometheus metrics of a mount, served at `http://ADDR/metrics` (`--metrics-addr`).
//!
//! - The `.cache-stats` numbers, read from the same document at each scrape
//!   (`collector.rs`): one source of truth for the file, `s3cachefs stats` and `/metrics`,
//!   and a field added to `.cache-stats` is exported without a change here.
//! - Histograms and counters the lower layers fill as things happen: each layer owns its
//!   recorder ([`StoreMetrics`], [`CacheMetrics`], [`ReadMetrics`]) and this module only
//!   makes them (one set per mount, sharing the bounded `bucket` label) and registers
//!   them.
//! - The user's labels (`--metrics-label k=v`) on every series, so many mounts on many
//!   hosts can be told apart.
//!
//! `http.rs` is the HTTP side: hyper, answering `GET /metrics` in the Prometheus text
//! format, or OpenMetrics when the scraper asks for it.

mod collector;
mod http;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tracing::info;

use crate::cache::CacheMetrics;
use crate::fs::{ReadMetrics, S3Fs, Source};
use crate::store::{BucketLabels, StoreMetrics};

/// Every metric's name starts with this (`s3cachefs_hits_total`).
pub const PREFIX: &str = "s3cachefs";

/// Labels s3cachefs sets itself, which a user label may not take.
pub const RESERVED_LABELS: &[&str] = &[
    "bucket", "tier", "result", "op", "outcome", "le", "version", "quantile",
];

/// The metrics settings of a mount: off unless `addr` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsOptions {
    /// Where to serve `/metrics`; port 0 picks a free one.
    pub addr: Option<SocketAddr>,
    /// Labels added to every series, in the order given.
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The recorders handed to the lower layers; all of them record nothing when metrics
/// are off.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub store: StoreMetrics,
    pub cache: CacheMetrics,
    pub reads: ReadMetrics,
}

impl Metrics {
    pub fn new(opts: &MetricsOptions, source: &Source) -> Metrics {
        if opts.addr.is_none() {
            return Metrics::default();
        }
        let only = match source {
            Source::Bucket { bucket, .. } => Some(bucket.clone()),
            Source::AllBuckets => None,
        };
        let buckets = Arc::new(BucketLabels::new(only));
        Metrics {
            store: StoreMetrics::new(buckets.clone()),
            cache: CacheMetrics::new(buckets.clone()),
            reads: ReadMetrics::new(buckets),
        }
    }
}

/// The listening socket of `/metrics`, bound before the mount goes live (so a port in
/// use fails the mount at once, and the port chosen for `:0` is known to `.cache-stats`)
/// and served once the filesystem exists.
#[derive(Debug)]
pub struct Exporter {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl Exporter {
    /// `None` when metrics are off.
    pub fn bind(opts: &MetricsOptions) -> Result<Option<Exporter>, MetricsError> {
        let Some(want) = opts.addr else {
            return Ok(None);
        };
        let bind = || {
            let l = std::net::TcpListener::bind(want)?;
            l.set_nonblocking(true)?;
            let addr = l.local_addr()?;
            Ok((l, addr))
        };
        let (listener, addr) =
            bind().map_err(|source| MetricsError::Bind { addr: want, source })?;
        Ok(Some(Exporter { listener, addr }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `/metrics` on the current Tokio runtime until it shuts down.
    pub fn serve(
        self,
        opts: &MetricsOptions,
        metrics: &Metrics,
        fs: Arc<S3Fs>,
    ) -> Result<(), MetricsError> {
        let addr = self.addr;
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let registry = Arc::new(registry(opts, metrics, fs));
        tokio::spawn(http::serve(listener, registry));
        info!(%addr, "metrics: serving http://{addr}/metrics");
        Ok(())
    }
}

/// Everything `/metrics` shows, under [`PREFIX`] and the user's labels.
fn registry(opts: &MetricsOptions, metrics: &Metrics, fs: Arc<S3Fs>) -> Registry {
    let labels = opts
        .labels
        .iter()
        .map(|(k, v)| (Cow::Owned(k.clone()), Cow::Owned(v.clone())));
    let mut registry = Registry::with_prefix_and_labels(PREFIX, labels);
    registry.register(
        "build",
        "The s3cachefs version serving these metrics",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
    metrics.reads.register(&mut registry);
    metrics.cache.register(&mut registry);
    metrics.store.register(&mut registry);
    // The counters of a one-bucket mount are all of that bucket; those of a mount of
    // every bucket are of no one bucket, and carry no bucket label.
    let stats = match &fs.config().source {
        Source::Bucket { bucket, .. } => {
            registry.sub_registry_with_label((Cow::Borrowed("bucket"), Cow::Owned(bucket.clone())))
        }
        Source::AllBuckets => &mut registry,
    };
    stats.register_collector(Box::new(collector::StatsCollector::new(fs)));
    registry
}
