//! The shared cache tier: a bucket of an S3-compatible store that many hosts read blocks
//! from and write blocks to, so a fleet fetches each object from the origin once.
//!
//! Reads go local cache → this tier → origin, one part at a time, inside the fill
//! (`fill/shared.rs`). Parts that came from the origin and verified are uploaded in the
//! background (`upload.rs`). Nothing here ever fails a read: an error, a timeout or a
//! block that does not check out (`block.rs`) is a miss, and a tier that keeps failing
//! is left alone for a while (the breaker below). `gc.rs` bounds the tier's size.

pub mod block;
pub mod gc;
mod upload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::store::{ByteStream, ObjectStore, Put, StoreError, s3_url};
use block::{Corrupt, Decoder, Version};
pub(crate) use upload::{OpenFile, UploadJob};

/// Longest a wait for the tier's next bytes may take before the part goes to the origin.
pub const WAIT: Duration = Duration::from_secs(2);
/// The slowest a whole block may come, beyond [`WAIT`] for its start: a bound on a tier
/// that trickles bytes just often enough to beat [`WAIT`], loose enough for a busy one.
const MIN_RATE: u64 = 1 << 20;

/// How long a block of `len` bytes may take at [`MIN_RATE`].
fn block_time(len: u64) -> Duration {
    Duration::from_millis(len.saturating_mul(1000) / MIN_RATE)
}
/// Failures in a row that open the breaker.
const FAILURES_TO_OPEN: u64 = 3;
/// How long an open breaker keeps the tier out of reads before trying it again.
pub const OPEN_FOR: Duration = Duration::from_secs(10);

/// Where the tier is and how this mount uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// The origin's endpoint as this mount names it: part of every block's key, so
    /// hosts share blocks only of the same origin.
    pub origin: String,
    /// Larger objects are neither read from nor written to the tier.
    pub max_object_size: Option<u64>,
    /// Read blocks, never write them.
    pub read_only: bool,
}

/// `s3://BUCKET[/PREFIX]` into (bucket, prefix).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("'{url}' is not an s3://BUCKET[/PREFIX] URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || bucket.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "'{url}' names no usable bucket (s3://BUCKET[/PREFIX])"
        ));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// The counters of the tier behind `.cache-stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
    pub corrupt: AtomicU64,
    pub bytes: AtomicU64,
    pub uploads: AtomicU64,
    pub uploads_dropped: AtomicU64,
    pub uploads_pending: AtomicU64,
}

/// What `.cache-stats` shows of the tier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub corrupt: u64,
    pub bytes: u64,
    pub uploads: u64,
    pub uploads_dropped: u64,
    pub uploads_pending: u64,
    /// ok, unreachable, read-only or off.
    pub state: &'static str,
}

/// Why a block could not be had from the tier.
#[derive(Debug)]
pub(crate) enum Miss {
    /// Not there (or the tier is not being asked just now).
    Absent,
    /// The tier failed or was too slow; counted.
    Failed,
    /// The tier answered with a block that does not check out; counted.
    Corrupt,
}

pub struct SharedTier {
    cfg: SharedConfig,
    /// For reads: short timeouts, few attempts.
    reader: Arc<dyn ObjectStore>,
    /// For uploads, deletes and the probe.
    writer: Arc<dyn ObjectStore>,
    pub(crate) counters: Counters,
    /// False when the start-up probe found the tier unusable: it is not used at all.
    usable: AtomicBool,
    breaker: Mutex<Breaker>,
    /// Corruption is logged once per mount, then at debug.
    warned_corrupt: AtomicBool,
    uploads: Mutex<Option<tokio::sync::mpsc::Sender<UploadJob>>>,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u64,
    open_until: Option<Instant>,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTier")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl SharedTier {
    /// A tier over `reader` (used for block reads, with short time limits) and `writer`
    /// (uploads, deletes, the probe). Must be called inside a Tokio runtime: the upload
    /// workers are tasks on it.
    pub fn start(
        cfg: SharedConfig,
        reader: Arc<dyn ObjectStore>,
        writer: Arc<dyn ObjectStore>,
    ) -> Arc<SharedTier> {
        let tier = Arc::new(SharedTier {
            cfg,
            reader,
            writer,
            counters: Counters::default(),
            usable: AtomicBool::new(true),
            breaker: Mutex::new(Breaker::default()),
            warned_corrupt: AtomicBool::new(false),
            uploads: Mutex::new(None),
        });
        if !tier.cfg.read_only {
            *tier.uploads.lock() = Some(upload::start_workers(&tier));
        }
        tier
    }

    pub fn config(&self) -> &SharedConfig {
        &self.cfg
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        s3_url(&self.cfg.bucket, &self.cfg.prefix)
    }

    /// Checks at start-up that the tier can be used: writes, reads back and deletes a
    /// marker (read-only: lists the prefix). On failure the tier is not used by this
    /// mount, and the error says why.
    pub async fn probe(&self, within: Duration) -> Result<(), StoreError> {
        let checked = tokio::time::timeout(within, self.probe_once()).await;
        let result = match checked {
            Ok(r) => r,
            Err(_) => Err(StoreError::NoAnswer(format!(
                "{}: no answer within {within:?}",
                self.url()
            ))),
        };
        if result.is_err() {
            self.usable.store(false, Ordering::Relaxed);
            self.uploads.lock().take();
        }
        result
    }

    async fn probe_once(&self) -> Result<(), StoreError> {
        let dir = block::version_dir(&self.cfg.prefix, "");
        if self.cfg.read_only {
            self.reader.list(&self.cfg.bucket, &dir, Some("/")).await?;
            return Ok(());
        }
        let marker = format!("{dir}probe-{:016x}", rand::random::<u64>());
        let body = Bytes::from_static(b"s3cachefs shared tier probe");
        self.writer
            .put_object(&self.cfg.bucket, &marker, body.clone(), Put::IfAbsent)
            .await?;
        let mut got = self.reader.get_checked(&self.cfg.bucket, &marker).await?;
        let mut read = Vec::new();
        while let Some(chunk) = got.body.next().await {
            read.extend_from_slice(&chunk?);
        }
        let _ = self
            .writer
            .delete_objects(&self.cfg.bucket, std::slice::from_ref(&marker))
            .await;
        if read != body {
            return Err(StoreError::Other(format!(
                "{}: the marker read back is not the one written",
                s3_url(&self.cfg.bucket, &marker)
            )));
        }
        Ok(())
    }

    /// ok, unreachable, read-only (and working) or off (never for a tier that exists).
    pub fn state(&self) -> &'static str {
        if !self.usable.load(Ordering::Relaxed) || self.breaker_open() {
            "unreachable"
        } else if self.cfg.read_only {
            "read-only"
        } else {
            "ok"
        }
    }

    pub fn snapshot(&self) -> SharedSnapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SharedSnapshot {
            hits: get(&c.hits),
            misses: get(&c.misses),
            errors: get(&c.errors),
            corrupt: get(&c.corrupt),
            bytes: get(&c.bytes),
            uploads: get(&c.uploads),
            uploads_dropped: get(&c.uploads_dropped),
            uploads_pending: get(&c.uploads_pending),
            state: self.state(),
        }
    }

    /// Whether objects of `size` bytes go through the tier at all.
    pub fn takes(&self, size: u64) -> bool {
        size > 0
            && self.usable.load(Ordering::Relaxed)
            && self.cfg.max_object_size.is_none_or(|m| size <= m)
    }

    fn breaker_open(&self) -> bool {
        self.breaker
            .lock()
            .open_until
            .is_some_and(|t| Instant::now() < t)
    }

    /// The tier answered as it should: close the breaker.
    fn went_well(&self) {
        let mut b = self.breaker.lock();
        if b.open_until.take().is_some() {
            info!(tier = %self.url(), "shared cache tier answers again; reading from it");
        }
        b.failures = 0;
    }

    /// The tier failed or was too slow: counted, and after a few in a row it is left
    /// alone for [`OPEN_FOR`].
    fn went_wrong(&self, why: &str) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let mut b = self.breaker.lock();
        b.failures += 1;
        let was_open = b.open_until.is_some();
        if b.failures >= FAILURES_TO_OPEN {
            b.open_until = Some(Instant::now() + OPEN_FOR);
            if !was_open {
                warn!(tier = %self.url(), %why,
                    "shared cache tier failing: reading from the origin only, trying it again in {}s",
                    OPEN_FOR.as_secs());
            }
        } else {
            debug!(tier = %self.url(), %why, "shared cache tier request failed");
        }
    }

    /// A block that does not check out: counted, logged once, and (when this mount
    /// writes) deleted in the background, so a good copy can take its place without the
    /// reader waiting for the delete.
    fn found_corrupt(&self, key: &str, c: &Corrupt) {
        self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        let url = s3_url(&self.cfg.bucket, key);
        if !self.warned_corrupt.swap(true, Ordering::Relaxed) {
            warn!(%url, why = %c.0, "shared cache block refused; reading the origin (reported once)");
        } else {
            debug!(%url, why = %c.0, "shared cache block refused");
        }
        if !self.cfg.read_only {
            let (writer, bucket, key) = (
                self.writer.clone(),
                self.cfg.bucket.clone(),
                key.to_string(),
            );
            tokio::spawn(async move {
                if let Err(e) = writer.delete_objects(&bucket, &[key]).await {
                    debug!(error = %e, "deleting a corrupt shared block");
                }
            });
        }
    }

    /// An upload failed: counted as a tier error, but it does not keep reads away from
    /// the tier (a store can take GETs and refuse PUTs).
    fn upload_failed(&self, why: &str) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        debug!(tier = %self.url(), %why, "shared cache upload failed");
    }

    /// Asks for block `part` of `v` and reads up to its verified header: one round trip.
    pub(crate) async fn open_block(
        self: &Arc<Self>,
        v: &Version,
        part: u64,
    ) -> Result<BlockReader, Miss> {
        if !self.usable.load(Ordering::Relaxed) || self.breaker_open() {
            return Err(Miss::Absent);
        }
        let key = v.block_key(&self.cfg.prefix, part);
        let got = tokio::time::timeout(WAIT, self.reader.get_checked(&self.cfg.bucket, &key));
        let body = match got.await {
            Ok(Ok(g)) => g.body,
            // AWS answers 403 rather than 404 for a key that is not there when the caller
            // may not list the bucket: the tier answered, and has no such block for us.
            Ok(Err(StoreError::NotFound(_) | StoreError::AccessDenied(_))) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                self.went_well();
                return Err(Miss::Absent);
            }
            Ok(Err(e)) => {
                self.went_wrong(&e.to_string());
                return Err(Miss::Failed);
            }
            Err(_) => {
                self.went_wrong(&format!("no answer within {WAIT:?}"));
                return Err(Miss::Failed);
            }
        };
        let range = v.part_range(part);
        let mut r = BlockReader {
            tier: self.clone(),
            key,
            body,
            deadline: Instant::now() + WAIT + block_time(range.end - range.start),
            decoder: Decoder::new(v.clone(), part),
            ready: std::collections::VecDeque::new(),
            ended: false,
        };
        while !r.decoder.has_header() {
            r.pull().await?;
            if r.ended {
                // pull() has counted what went wrong.
                return Err(Miss::Corrupt);
            }
        }
        Ok(r)
    }

    /// Queues the upload of a part fetched from the origin and verified. A full queue
    /// drops it (counted): uploads never hold up a reader.
    pub(crate) fn upload(&self, job: UploadJob) {
        let Some(tx) = self.uploads.lock().clone() else {
            return;
        };
        self.counters
            .uploads_pending
            .fetch_add(1, Ordering::Relaxed);
        if tx.try_send(job).is_err() {
            self.counters
                .uploads_pending
                .fetch_sub(1, Ordering::Relaxed);
            self.counters
                .uploads_dropped
                .fetch_add(1, Ordering::Relaxed);
            debug!(tier = %self.url(), "upload queue full: block not shared");
        }
    }
}

/// A block on its way from the tier: its data in verified pieces.
pub(crate) struct BlockReader {
    tier: Arc<SharedTier>,
    key: String,
    body: ByteStream,
    /// The whole block must have come by then: a tier that trickles is a failing one.
    deadline: Instant,
    decoder: Decoder,
    ready: std::collections::VecDeque<(u64, Bytes)>,
    ended: bool,
}

impl BlockReader {
    /// The object's size as the block gives it.
    pub fn object_size(&self) -> u64 {
        self.decoder.object_size().unwrap_or(0)
    }

    /// The next verified piece and its offset in the object; `Ok(None)` at the end of a
    /// block that checked out in full. An `Err` has been counted and logged.
    pub async fn next(&mut self) -> Result<Option<(u64, Bytes)>, Miss> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Ok(Some(p));
            }
            if self.ended {
                return Ok(None);
            }
            self.pull().await?;
        }
    }

    /// Reads the body once more, within [`WAIT`] and the block's deadline.
    async fn pull(&mut self) -> Result<(), Miss> {
        let until = self.deadline.min(Instant::now() + WAIT);
        let next = tokio::time::timeout_at(until, self.body.next()).await;
        let fed = match next {
            Err(_) => {
                self.tier
                    .went_wrong(&format!("too slow: block {}", self.key));
                return Err(Miss::Failed);
            }
            // Every byte came, and the SDK found the body's SHA-256 wrong: corrupt.
            Ok(Some(Err(e))) if self.decoder.complete() => {
                self.ended = true;
                let why = Corrupt(format!("the body's S3 checksum: {e}"));
                self.tier.found_corrupt(&self.key, &why);
                return Err(Miss::Corrupt);
            }
            Ok(Some(Err(e))) => {
                self.tier.went_wrong(&e.to_string());
                return Err(Miss::Failed);
            }
            Ok(Some(Ok(chunk))) => self.decoder.feed(&chunk),
            Ok(None) => {
                self.ended = true;
                self.decoder
                    .finish()
                    .map(|last| last.into_iter().collect::<Vec<_>>())
            }
        };
        match fed {
            Ok(pieces) => {
                self.ready.extend(pieces);
                if self.ended {
                    self.tier.counters.hits.fetch_add(1, Ordering::Relaxed);
                    self.tier.went_well();
                }
                Ok(())
            }
            Err(c) => {
                self.ended = true;
                self.tier.found_corrupt(&self.key, &c);
                Err(Miss::Corrupt)
            }
        }
    }
}
