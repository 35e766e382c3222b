//! Putting a mount together: check the mountpoint, reach S3, open the cache, mount, serve
//! until unmounted or signalled, close the cache cleanly. Alongside: the control socket
//! (`s3cachefs stats/clear/warm`), `/metrics` when asked for, and a periodic summary of
//! the counters in the log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::cache::shared::{self, SharedConfig, SharedTier};
use crate::cache::{Cache, CacheError, SystemClock};
use crate::config::{Config, SharedSettings, Source};
use crate::control::{self, ControlServer};
use crate::fs::{FsConfig, S3Fs};
use crate::fuse;
use crate::metrics::{Exporter, Metrics, MetricsError};
use crate::store::metrics::{SHARED, StoreMetrics};
use crate::store::{ObjectStore, S3Options, S3Store, StoreError};
use futures::FutureExt;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mountpoint {0}")]
    Mountpoint(String),
    #[error("{0}")]
    S3(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("mounting {path}: {source}")]
    Fuse {
        path: String,
        source: std::io::Error,
    },
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Checks that `path` can take a mount: an existing directory, not already mounted.
pub fn check_mountpoint(path: &Path) -> Result<(), MountError> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountError::Mountpoint(format!(
                "{shown} is a dead FUSE mount (transport endpoint is not connected); \
                 run `s3cachefs unmount {shown}` first"
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError::Mountpoint(format!(
                "{shown} does not exist; create it with `mkdir -p {shown}`"
            )));
        }
        Err(e) => return Err(MountError::Mountpoint(format!("{shown}: {e}"))),
    };
    if !meta.is_dir() {
        return Err(MountError::Mountpoint(format!(
            "{shown} is not a directory"
        )));
    }
    use std::os::unix::fs::MetadataExt;
    if let Some(parent) = path.parent()
        && let Ok(pm) = std::fs::metadata(parent)
        && pm.dev() != meta.dev()
        && path != Path::new("/")
    {
        return Err(MountError::Mountpoint(format!(
            "{shown} is busy: something is already mounted there"
        )));
    }
    Ok(())
}

/// The warning for a mountpoint that is not empty: what is in it stays on disk but cannot
/// be seen while the mount covers it, which looks like lost files. `None` when it is empty
/// (or cannot be read: then the mount itself says what is wrong).
pub fn hidden_by_mount(path: &Path) -> Option<String> {
    let _first_entry = std::fs::read_dir(path).ok()?.next()?;
    Some(format!(
        "{} is not empty: what is in it is hidden while s3cachefs is mounted there",
        path.display()
    ))
}

/// Says what went wrong reaching S3 in words a user can act on: what failed, the likely
/// cause, what to try.
fn explain(e: &StoreError, what: &str, endpoint: Option<&str>) -> MountError {
    let place = endpoint.unwrap_or("AWS S3");
    MountError::S3(match e {
        StoreError::NoCredentials(m) => format!(
            "no usable AWS credentials ({m}). Set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or use --profile with ~/.aws/credentials"
        ),
        StoreError::AccessDenied(m) => format!(
            "access denied to {what} ({m}). Check the credentials (AWS_ACCESS_KEY_ID/\
             AWS_SECRET_ACCESS_KEY, --profile) and their permissions"
        ),
        StoreError::NotFound(_) => format!("{what} does not exist at {place}"),
        StoreError::Transient(m)
        | StoreError::NoAnswer(m)
        | StoreError::Throttled(m)
        | StoreError::Unavailable(m) => {
            format!("cannot reach {place} ({m}). Check --endpoint-url, --region and the network")
        }
        other => format!("checking {what} at {place}: {other}"),
    })
}

/// What a mount tells whoever waits for it, once: `Ok` with the warnings the user should
/// see (a shared tier that cannot be used) when the mount is live, or the error that
/// stopped it.
pub type Ready = Result<Vec<String>, String>;

/// Mounts according to `cfg` and serves until unmounted or SIGINT/SIGTERM. `ready` is
/// called once (see [`Ready`]).
pub fn run(cfg: Config, ready: impl FnOnce(Ready)) -> Result<(), MountError> {
    let metrics = Metrics::new(&cfg.metrics, &cfg.mount.source);
    // No wait on S3 may outlast the read timeout, whatever the retry settings.
    let s3 = S3Options {
        request_timeout: cfg.cache.read_timeout,
        metrics: metrics.store.clone(),
        ..cfg.s3.clone()
    };
    let store = |_: &tokio::runtime::Runtime| async move {
        Arc::new(S3Store::new(&s3).await) as Arc<dyn ObjectStore>
    };
    serve_with(cfg, metrics, store, signalled(), ready)
}

/// [`run`] with the store and the end given: the store is made on the mount's runtime
/// by `store`, and the mount is taken down when `shutdown` completes (or when it is
/// unmounted). Tests mount in-process over a [`crate::store::MemoryStore`] this way.
pub fn serve<S, F>(
    cfg: Config,
    store: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(Ready),
) -> Result<(), MountError>
where
    S: FnOnce(&tokio::runtime::Runtime) -> F,
    F: std::future::Future<Output = Arc<dyn ObjectStore>>,
{
    // A store made by the caller records no requests; the rest of the metrics work.
    let metrics = Metrics::new(&cfg.metrics, &cfg.mount.source);
    serve_with(cfg, metrics, store, shutdown, ready)
}

/// [`serve`] with the recorders the store was made with.
fn serve_with<S, F>(
    cfg: Config,
    metrics: Metrics,
    store: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(Ready),
) -> Result<(), MountError>
where
    S: FnOnce(&tokio::runtime::Runtime) -> F,
    F: std::future::Future<Output = Arc<dyn ObjectStore>>,
{
    let mut ready = Some(ready);
    let mut tell = |r: Ready| {
        if let Some(f) = ready.take() {
            f(r);
        }
    };
    let result = serve_inner(cfg, &metrics, store, shutdown, &mut tell);
    if let Err(e) = &result {
        tell(Err(e.to_string()));
    }
    result
}

/// Completes on SIGINT or SIGTERM.
async fn signalled() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: unmounting"),
        _ = term.recv() => info!("SIGTERM: unmounting"),
    }
}

fn serve_inner<S, F>(
    cfg: Config,
    metrics: &Metrics,
    store: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    tell: &mut impl FnMut(Ready),
) -> Result<(), MountError>
where
    S: FnOnce(&tokio::runtime::Runtime) -> F,
    F: std::future::Future<Output = Arc<dyn ObjectStore>>,
{
    check_mountpoint(&cfg.mount.mountpoint)?;
    if let Some(hidden) = hidden_by_mount(&cfg.mount.mountpoint) {
        warn!("{hidden}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3cachefs")
        .build()
        .map_err(MountError::Runtime)?;
    // Bound first: a port in use fails the mount before it touches S3.
    let exporter = Exporter::bind(&cfg.metrics)?;
    let metrics_addr = exporter.as_ref().map(Exporter::addr);
    let store = rt.block_on(store(&rt));
    let (fs, cache, warnings) = rt.block_on(prepare(&cfg, store, metrics, metrics_addr))?;
    if let Some(e) = exporter {
        let _in_runtime = rt.enter();
        e.serve(&cfg.metrics, metrics, fs.clone())?;
    }
    let control = start_control(&rt, &cache, &cfg.mount.mountpoint);
    rt.spawn(log_summaries(cache.clone(), SUMMARY_INTERVAL));
    let mut mounted =
        fuse::mount(fs, rt.handle().clone(), &cfg.mount.fuse_options()).map_err(|source| {
            MountError::Fuse {
                path: cfg.mount.mountpoint.display().to_string(),
                source,
            }
        })?;
    let mut unmounter = mounted.unmounter();
    rt.spawn(async move {
        shutdown.await;
        if let Err(e) = unmounter.unmount() {
            warn!(error = %e, "unmount failed");
        }
    });
    tell(Ok(warnings));
    let served = mounted.run();
    // Nothing may ask the cache for anything once it is closed.
    drop(control);
    rt.block_on(cache.settle_landed_downloads(SETTLE_AT_UNMOUNT));
    if let Err(e) = cache.close() {
        warn!(error = %e, "closing the cache");
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    info!("unmounted");
    served.map_err(|source| MountError::Fuse {
        path: cfg.mount.mountpoint.display().to_string(),
        source,
    })
}

/// How often the log gets a summary of the cache counters.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(300);
/// Longest the mount waits for the root listing before going live without it.
const ROOT_PRIME_WAIT: Duration = Duration::from_secs(2);
/// How long an unmount waits for downloads that have all their bytes to be verified and
/// kept; `s3cachefs unmount` waits up to 10 s for the process.
const SETTLE_AT_UNMOUNT: Duration = Duration::from_secs(5);

/// Starts the control socket that `s3cachefs stats/clear/warm` talk to. There is none when
/// the cache is off (nothing to clear or warm); a mount works without it, so a failure
/// is only a warning.
fn start_control(
    rt: &tokio::runtime::Runtime,
    cache: &Cache,
    mountpoint: &Path,
) -> Option<ControlServer> {
    let socket = control::socket_path(cache.dir()?);
    // Canonical, as `s3cachefs clear MOUNTPOINT` resolves its argument.
    let mountpoint = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.into());
    let _in_runtime = rt.enter();
    match ControlServer::start(cache.clone(), &socket, &mountpoint) {
        Ok(server) => Some(server),
        Err(e) => {
            warn!(socket = %socket.display(), error = %e, "no control socket: `s3cachefs clear` and `warm s3://` cannot reach this mount");
            None
        }
    }
}

/// Logs the cache counters every `every` while the mount is used; an idle mount adds
/// nothing to the log.
async fn log_summaries(cache: Cache, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = None;
    loop {
        tick.tick().await;
        let s = cache.stats();
        let activity = Some((s.hits, s.misses, s.errors));
        if activity == last {
            continue;
        }
        last = activity;
        info!(
            hits = s.hits,
            misses = s.misses,
            hit_rate = s.hit_rate,
            size_mb = s.total_size >> 20,
            max_size_mb = s.max_size >> 20,
            entries = s.entry_count,
            max_entries = s.max_entries,
            evictions = s.evictions,
            bytes_from_cache = s.bytes_from_cache,
            bytes_from_s3 = s.bytes_from_s3,
            errors = s.errors,
            "cache summary"
        );
    }
}

/// Longest the mount waits for S3 to answer its first request before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Checks that the credentials reach what is to be mounted, within [`START_TIMEOUT`]
/// whatever the retry settings.
async fn check_access(store: &dyn ObjectStore, cfg: &Config) -> Result<(), MountError> {
    let endpoint = cfg.s3.endpoint_url.as_deref();
    let (what, asked) = match &cfg.mount.source {
        Source::AllBuckets => (
            "the bucket list".to_string(),
            async {
                let buckets = store.list_buckets().await?;
                info!(buckets = buckets.len(), "credentials can list buckets");
                Ok(())
            }
            .boxed(),
        ),
        Source::Bucket { bucket, .. } => (format!("bucket {bucket}"), store.head_bucket(bucket)),
    };
    match tokio::time::timeout(START_TIMEOUT, asked).await {
        Ok(r) => r.map_err(|e| explain(&e, &what, endpoint)),
        Err(_) => Err(MountError::S3(format!(
            "{} did not answer within {}s (asking for {what}). Check --endpoint-url, that \
             the server is up, and the network (a firewall that drops packets looks like this)",
            endpoint.unwrap_or("AWS S3"),
            START_TIMEOUT.as_secs()
        ))),
    }
}

/// Reaches S3 (and the shared tier, at the same time), opens the cache, makes the
/// filesystem. Returns the warnings the user should see.
async fn prepare(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    metrics: &Metrics,
    metrics_addr: Option<std::net::SocketAddr>,
) -> Result<(Arc<S3Fs>, Cache, Vec<String>), MountError> {
    let endpoint = cfg.s3.endpoint_url.as_deref();
    let (access, shared) = tokio::join!(
        check_access(store.as_ref(), cfg),
        start_shared(
            cfg.shared.as_ref(),
            cfg.s3.endpoint_url.as_deref(),
            cfg.cache.enabled,
            metrics.store.for_tier(SHARED),
        )
    );
    access?;
    let (shared, warnings) = shared;
    let cache_cfg = crate::cache::CacheConfig {
        metrics: metrics.cache.clone(),
        ..cfg.cache.clone()
    };
    let cache = Cache::open_tiered(cache_cfg, store, shared, Arc::new(SystemClock))?;
    let c = &cfg.cache;
    info!(
        mountpoint = %cfg.mount.mountpoint.display(),
        source = ?cfg.mount.source,
        endpoint = endpoint.unwrap_or("aws"),
        region = cfg.s3.region.as_deref().unwrap_or("(default)"),
        profile = %c.profile,
        cache_enabled = c.enabled,
        cache_dir = %c.dir.display(),
        max_size_mb = c.max_size >> 20,
        max_entries = c.max_entries,
        ttl_hours = c.ttl.as_secs_f64() / 3600.0,
        validate_etag = c.validate_etag,
        metadata_ttl_s = cfg.mount.metadata_ttl.as_secs_f64(),
        "configuration"
    );
    let fs = S3Fs::new(
        FsConfig {
            source: cfg.mount.source.clone(),
            metadata_ttl: cfg.mount.metadata_ttl,
            uid: cfg.mount.uid,
            gid: cfg.mount.gid,
            file_mode: cfg.mount.file_mode,
            dir_mode: cfg.mount.dir_mode,
            readahead_files: cfg.mount.readahead_files,
            readahead_max_size: cfg.cache.part_size,
            read_metrics: metrics.reads.clone(),
            metrics_addr,
        },
        cache.clone(),
    );
    let fs = Arc::new(fs);
    // The first thing a user does is look at the root: list it now, while the mount is
    // being set up anyway, so that costs no round trip. A root too big to list quickly
    // goes on in the background instead of holding the mount up.
    let priming = tokio::spawn({
        let fs = fs.clone();
        async move { fs.prime_root().await }
    });
    if tokio::time::timeout(ROOT_PRIME_WAIT, priming)
        .await
        .is_err()
    {
        debug!("root listing still under way; mounting without waiting for it");
    }
    Ok((fs, cache, warnings))
}

/// Longest the start-up probe of the shared tier may take.
const SHARED_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the shared tier and probes it. A tier that cannot be used is a warning, not an
/// error: the mount works without it.
async fn start_shared(
    s: Option<&SharedSettings>,
    origin_endpoint: Option<&str>,
    cache_enabled: bool,
    store_metrics: StoreMetrics,
) -> (Option<Arc<SharedTier>>, Vec<String>) {
    let Some(s) = s else {
        return (None, Vec::new());
    };
    let url = crate::store::s3_url(&s.bucket, &s.prefix);
    if !cache_enabled {
        let w = format!("the shared cache tier {url} is not used: the local cache is off");
        warn!("{w}");
        return (None, vec![w]);
    }
    // Reads give up quickly (the origin is there); uploads take their time.
    let writer = S3Options {
        shared_tier: true,
        // A PUT sends a whole part within one attempt.
        attempt_timeout: s.s3.request_timeout,
        metrics: store_metrics,
        ..s.s3.clone()
    };
    let reader = S3Options {
        max_attempts: 2,
        connect_timeout: shared::WAIT,
        attempt_timeout: shared::WAIT,
        request_timeout: shared::WAIT,
        ..writer.clone()
    };
    let tier = SharedTier::start(
        SharedConfig {
            bucket: s.bucket.clone(),
            prefix: s.prefix.clone(),
            origin: origin_endpoint.unwrap_or(AWS_ORIGIN).to_string(),
            max_object_size: s.max_object_size,
            read_only: s.read_only,
        },
        Arc::new(S3Store::new(&reader).await),
        Arc::new(S3Store::new(&writer).await),
    );
    match tier.probe(SHARED_PROBE_TIMEOUT).await {
        Ok(()) => {
            info!(tier = %url, state = tier.state(), "shared cache tier in use");
            (Some(tier), Vec::new())
        }
        Err(e) => {
            let w = format!(
                "the shared cache tier {url} cannot be used ({e}); mounted without it. Check \
                 --shared-cache, --shared-endpoint-url and the credentials' rights on the bucket{}",
                if s.read_only {
                    " (read-only: list)"
                } else {
                    " (read-write: put, get, delete)"
                }
            );
            warn!("{w}");
            (Some(tier), vec![w])
        }
    }
}

/// How block keys name the origin when it is AWS S3 itself (no --endpoint-url).
const AWS_ORIGIN: &str = "https://s3.amazonaws.com";
