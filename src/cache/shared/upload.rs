//! Write-back to the shared tier: parts a fill fetched from the origin and verified are
//! uploaded by a few background workers from a bounded queue, each with
//! `If-None-Match: *` (another host's copy, if first, is kept). Nothing a reader waits
//! for happens here.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::debug;

use super::SharedTier;
use super::block::{self, Version};
use crate::store::Put;

/// Uploads waiting at most; more are dropped (and counted): a directory of 1,000 small
/// files read while big blocks upload must fit. A job holds no file and no data.
const QUEUE: usize = 2048;
/// Uploads under way at once.
const WORKERS: usize = 4;

/// Opens the (complete, verified) cache file holding a part's bytes, if the cache still
/// has it.
pub(crate) type OpenFile = Arc<dyn Fn() -> Option<Arc<File>> + Send + Sync>;

/// One part to share. Its cache file is opened when its turn comes, so a queued upload
/// keeps neither data in memory nor an evicted file's space on disk.
pub(crate) struct UploadJob {
    pub version: Version,
    pub part: u64,
    /// The tier's block was found corrupt: write over it (its delete may have failed).
    pub replace: bool,
    pub open: OpenFile,
}

pub(super) fn start_workers(tier: &Arc<SharedTier>) -> mpsc::Sender<UploadJob> {
    let (tx, rx) = mpsc::channel::<UploadJob>(QUEUE);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..WORKERS {
        let (rx, tier) = (rx.clone(), Arc::downgrade(tier));
        tokio::spawn(async move { work(rx, tier).await });
    }
    tx
}

/// Takes jobs until the queue closes (the tier is dropped, or found unusable). Each
/// worker builds its bodies in one buffer it keeps: a new part-sized buffer per upload,
/// freed on whatever thread, made the allocator's per-thread arenas hold hundreds of MiB.
async fn work(rx: Arc<tokio::sync::Mutex<mpsc::Receiver<UploadJob>>>, tier: Weak<SharedTier>) {
    let mut buf = Vec::new();
    loop {
        let job = rx.lock().await.recv().await;
        let Some(job) = job else { return };
        let Some(tier) = tier.upgrade() else { return };
        buf = upload(&tier, job, buf).await;
        tier.counters
            .uploads_pending
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Uploads one part; returns the buffer for the next.
async fn upload(tier: &SharedTier, job: UploadJob, mut buf: Vec<u8>) -> Vec<u8> {
    let key = job.version.block_key(&tier.cfg.prefix, job.part);
    let start = job.version.part_range(job.part).start;
    let mode = if job.replace {
        Put::Overwrite
    } else {
        Put::IfAbsent
    };
    let (open, v, part) = (job.open, job.version, job.part);
    // Opening, reading and hashing a part takes milliseconds of disk and CPU: off the
    // runtime.
    let built = tokio::task::spawn_blocking(move || {
        let encoded = open()
            .ok_or_else(|| std::io::Error::other("no longer in the cache"))
            .and_then(|file| {
                block::encode_into(&v, part, &mut buf, |b, at| {
                    file.read_exact_at(b, start + at)
                })
            });
        (encoded, buf)
    })
    .await;
    let body = match built {
        Ok((Ok(()), b)) => Bytes::from(b),
        Ok((Err(e), b)) => {
            tier.counters
                .uploads_dropped
                .fetch_add(1, Ordering::Relaxed);
            debug!(%key, error = %e, "shared upload: part not uploaded");
            return b;
        }
        Err(_) => return Vec::new(),
    };
    let sent = tier
        .writer
        .put_object(&tier.cfg.bucket, &key, body.clone(), mode)
        .await;
    match sent {
        Ok(true) => {
            tier.counters.uploads.fetch_add(1, Ordering::Relaxed);
        }
        // Another host's upload of this block came first: the same bytes, fine.
        Ok(false) => debug!(%key, "shared upload: block already there"),
        Err(e) => tier.upload_failed(&format!("upload of {key}: {e}")),
    }
    // The request is done with the body: take its allocation back.
    body.try_into_mut().map(Vec::from).unwrap_or_default()
}
