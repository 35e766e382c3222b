//! Write-back to the shared tier: parts a fill fetched from the origin and verified are
//! uploaded by a few background workers from a bounded queue, each with
//! `If-None-Match: *` (another host's copy, if first, is kept). Nothing a reader waits
//! for happens here.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use tracing::debug;

use super::SharedTier;
use super::block::{self, Version};
use crate::store::Put;

/// Uploads waiting at most; more are dropped (and counted). A directory of 1,000 small
/// files read while big blocks upload must fit; but each job holds its cache file open,
/// so at most a quarter of the open files limit (see [`queue_len`]).
const QUEUE: usize = 2048;
/// Uploads under way at once.
const WORKERS: usize = 4;

/// One part to share: its bytes are read from the (complete, verified) cache file when
/// its turn comes, so the queue holds no data.
pub(crate) struct UploadJob {
    pub version: Version,
    pub part: u64,
    pub file: Arc<File>,
}

/// [`QUEUE`], or a quarter of the open files limit when that is less (at least 64).
fn queue_len() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct given.
    let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    (files / 4).clamp(64, QUEUE as u64) as usize
}

pub(super) fn start_workers(tier: &Arc<SharedTier>) -> mpsc::Sender<UploadJob> {
    let (tx, rx) = mpsc::channel::<UploadJob>(queue_len());
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..WORKERS {
        let (rx, tier) = (rx.clone(), Arc::downgrade(tier));
        tokio::spawn(async move { work(rx, tier).await });
    }
    tx
}

/// Takes jobs until the queue closes (the tier is dropped, or found unusable).
async fn work(rx: Arc<tokio::sync::Mutex<mpsc::Receiver<UploadJob>>>, tier: Weak<SharedTier>) {
    loop {
        let job = rx.lock().await.recv().await;
        let Some(job) = job else { return };
        let Some(tier) = tier.upgrade() else { return };
        upload(&tier, job).await;
        tier.counters
            .uploads_pending
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn upload(tier: &SharedTier, job: UploadJob) {
    let key = job.version.block_key(&tier.cfg.prefix, job.part);
    let range = job.version.part_range(job.part);
    let (file, v, part) = (job.file, job.version, job.part);
    // Reading and hashing a part takes milliseconds of disk and CPU: off the runtime.
    let body = tokio::task::spawn_blocking(move || {
        let data =
            crate::cache::fill::pread(&file, range.start, (range.end - range.start) as usize)?;
        if data.len() as u64 != range.end - range.start {
            return Err(std::io::Error::other(
                "the cache file is shorter than the part",
            ));
        }
        Ok(block::encode(&v, part, &data))
    })
    .await;
    let body = match body {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            debug!(%key, error = %e, "shared upload: part not readable");
            return;
        }
        Err(_) => return,
    };
    match tier
        .writer
        .put_object(&tier.cfg.bucket, &key, body, Put::IfAbsent)
        .await
    {
        Ok(true) => {
            tier.counters.uploads.fetch_add(1, Ordering::Relaxed);
        }
        // Another host's upload of this block came first: the same bytes, fine.
        Ok(false) => debug!(%key, "shared upload: block already there"),
        Err(e) => tier.went_wrong(&format!("upload of {key}: {e}")),
    }
}
