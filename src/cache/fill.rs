//! Streaming fills: a miss starts one background download of the whole object into a
//! temporary cache file, in parts fetched by parallel ranged GETs pinned to one ETag
//! (`If-Match`). Reads are answered as soon as their bytes have landed; a read far ahead
//! of the fill fetches its own part at once. All handles of the object share the fill.
//! When every part has landed and the checksums agree, the file is committed to the cache.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::checksum::{ChecksumBuilder, Checksums, plain_md5};
use super::config::CacheError;
use super::db::BLOCK_SIZE;
use super::key::CacheKey;
use super::metrics::CacheMetrics;
use super::ranges::RangeSet;
use super::shared::block::Version;
use super::shared::{BlockReader, SharedTier};
use super::stats::{Stats, add};
use crate::store::metrics::{ORIGIN, SHARED};
use crate::store::{ByteStream, ObjectStore, StoreError};

/// Attempts per part (each resumes from the last byte received).
const PART_ATTEMPTS: u32 = 5;
/// Where an out-of-order fetch starts: the read's offset rounded down to this.
const SEEK_ALIGN: u64 = 64 * 1024;
/// Longest the other parts wait for the first bytes of part 0 before starting anyway.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FillFailure {
    /// The object changed (or vanished) on S3: bytes of this version can no longer be had.
    Changed,
    /// Network, S3 or local disk trouble: reads can still try S3 directly.
    Failed(String),
    /// The cache's disk is full: reads go to S3, and room is made for next time.
    NoSpace(String),
    /// Cancelled by the cache (cleared, or shutting down): reads go to S3.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Pending,
    InFlight,
    Done,
}

/// Where a part's bytes came from: only parts wholly from the origin are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartFrom {
    Unknown,
    Origin,
    Shared,
    Both,
    /// From the origin, in place of a block the tier had corrupt: uploaded over it.
    Replace,
}

/// The already open first part of a fill: the GET that started it.
pub(crate) enum First {
    Origin(ByteStream),
    Shared(Box<BlockReader>),
}

/// The fill's object version as the shared tier names it, when the tier takes it.
pub(crate) struct Blocks {
    pub tier: Arc<SharedTier>,
    pub version: Version,
}

struct State {
    landed: RangeSet,
    parts: Vec<Part>,
    from: Vec<PartFrom>,
    /// None while running.
    outcome: Option<Result<(), FillFailure>>,
}

/// What a fill needs from its cache.
#[derive(Clone)]
pub(crate) struct FillCtx {
    pub store: Arc<dyn ObjectStore>,
    pub stats: Arc<Stats>,
    pub metrics: CacheMetrics,
}

pub(crate) struct Fill {
    /// Which download of this object this is (its entry in the cache's flights map).
    pub flight: u64,
    pub cache_key: CacheKey,
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    /// The download's file in `tmp/`. Closed (taken) as soon as the fill fails, so a file
    /// already unlinked gives its space back at once even while handles of the fill live.
    file: Mutex<Option<Arc<File>>>,
    /// Its name relative to the cache directory (`tmp/...`).
    pub tmp_name: String,
    /// Started by directory read-ahead: its version was learned by its own first GET,
    /// moments before the open that joins it.
    pub read_ahead: bool,
    /// Parts are asked of the shared tier before the origin.
    pub blocks: Option<Blocks>,
    /// The first part came from the shared tier (the `tier` label of its metrics).
    pub first_from_shared: bool,
    /// When the download was asked for (its first request), for its throughput.
    pub started: std::time::Instant,
    /// When the open that started it asked for it, until its first bytes land: how long
    /// a cold open waits for its first byte. None for downloads ahead of use.
    pub cold_open: Mutex<Option<std::time::Instant>>,
    part_size: u64,
    state: Mutex<State>,
    progress: watch::Sender<u64>,
    ctx: FillCtx,
}

impl Fill {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        flight: u64,
        key: CacheKey,
        bucket: &str,
        object_key: &str,
        etag: &str,
        size: u64,
        file: File,
        tmp_name: String,
        part_size: u64,
        ctx: FillCtx,
    ) -> Fill {
        let part_size = part_size.max(64 * 1024);
        let parts = size.div_ceil(part_size) as usize;
        Fill {
            flight,
            cache_key: key,
            bucket: bucket.to_string(),
            key: object_key.to_string(),
            etag: etag.to_string(),
            size,
            file: Mutex::new(Some(Arc::new(file))),
            tmp_name,
            read_ahead: false,
            blocks: None,
            first_from_shared: false,
            started: std::time::Instant::now(),
            cold_open: Mutex::new(None),
            part_size,
            state: Mutex::new(State {
                landed: RangeSet::default(),
                parts: vec![Part::Pending; parts],
                from: vec![PartFrom::Unknown; parts],
                outcome: None,
            }),
            progress: watch::channel(0).0,
            ctx,
        }
    }

    fn part_range(&self, i: usize) -> Range<u64> {
        let start = i as u64 * self.part_size;
        start..(start + self.part_size).min(self.size)
    }

    fn bump(&self) {
        self.progress.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn outcome(&self) -> Option<Result<(), FillFailure>> {
        self.state.lock().outcome.clone()
    }

    /// Part 0's body is already open (the GET that started the fill): no one else may
    /// fetch it.
    pub(crate) fn mark_first_in_flight(&self) {
        if let Some(p) = self.state.lock().parts.first_mut() {
            *p = Part::InFlight;
        }
    }

    /// Where this download's bytes came from, as the metrics' `tier` label says it:
    /// `shared` when every part came from the shared tier, else `origin`.
    pub(crate) fn tier(&self) -> &'static str {
        let st = self.state.lock();
        if !st.from.is_empty() && st.from.iter().all(|f| *f == PartFrom::Shared) {
            SHARED
        } else {
            ORIGIN
        }
    }

    /// Every byte has landed (verification and commit may still be under way).
    pub(crate) fn all_landed(&self) -> bool {
        self.state.lock().landed.contains(&(0..self.size))
    }

    /// The download's file while it is open.
    pub(crate) fn file(&self) -> Option<Arc<File>> {
        self.file.lock().clone()
    }

    /// Ends the fill (first outcome wins). A failed fill closes its file: its reads go
    /// to S3 from now on.
    pub(crate) fn finish(&self, outcome: Result<(), FillFailure>) {
        {
            let mut st = self.state.lock();
            if st.outcome.is_some() {
                return;
            }
            if outcome.is_err() {
                self.file.lock().take();
            }
            st.outcome = Some(outcome);
        }
        self.bump();
    }

    /// The bytes at `offset` if they have all landed: a `pread`, no waiting.
    pub(crate) fn try_read(&self, offset: u64, len: usize) -> Option<std::io::Result<Bytes>> {
        let end = self.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Some(Ok(Bytes::new()));
        }
        if !self.state.lock().landed.contains(&(offset..end)) {
            return None;
        }
        let file = self.file()?;
        Some(pread(&file, offset, (end - offset) as usize))
    }

    /// Waits until the bytes at `offset` have landed (asking for them first if the fill
    /// is not about to get there) and reads them.
    pub(crate) async fn read(
        self: &Arc<Self>,
        offset: u64,
        len: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Bytes, ReadMiss> {
        let end = self.size.min(offset.saturating_add(len as u64));
        let mut rx = self.progress.subscribe();
        let mut asked = false;
        loop {
            rx.borrow_and_update();
            if let Some(r) = self.try_read(offset, len) {
                return r.map_err(|e| ReadMiss::Failed(e.to_string()));
            }
            match self.outcome() {
                Some(Err(FillFailure::Changed)) => return Err(ReadMiss::Changed),
                Some(Err(FillFailure::Failed(m) | FillFailure::NoSpace(m))) => {
                    return Err(ReadMiss::Failed(m));
                }
                Some(Err(FillFailure::Cancelled)) => {
                    return Err(ReadMiss::Failed("download cancelled".into()));
                }
                Some(Ok(())) => {
                    return Err(ReadMiss::Failed("fill ended without these bytes".into()));
                }
                None => {}
            }
            if !asked {
                self.request(offset..end);
                asked = true;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReadMiss::Failed(format!(
                    "no bytes at offset {offset} within the read timeout"
                )));
            }
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        }
    }

    /// Fetches the parts covering `r` now, beside the sequential workers, unless they
    /// are already landed or on their way.
    fn request(self: &Arc<Self>, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let first = (r.start / self.part_size) as usize;
        let last = ((r.end - 1) / self.part_size) as usize;
        for i in first..=last {
            let take = {
                let mut st = self.state.lock();
                match st.parts.get(i) {
                    Some(Part::Pending) => {
                        st.parts[i] = Part::InFlight;
                        true
                    }
                    _ => false,
                }
            };
            if take {
                debug!(part = i, key = %self.key, "fetching part out of order for a read");
                // The part is fetched from where the read wants it (a seek to the
                // index at the end of a video lands mid-part); its head comes after.
                let from = if i == first {
                    r.start - r.start % SEEK_ALIGN
                } else {
                    self.part_range(i).start
                };
                let me = self.clone();
                tokio::spawn(async move { me.run_part(i, None, from).await });
            }
        }
    }

    /// The next part for a sequential worker: lowest pending first.
    fn next_pending(&self) -> Option<usize> {
        let mut st = self.state.lock();
        if st.outcome.is_some() {
            return None;
        }
        let i = st.parts.iter().position(|p| *p == Part::Pending)?;
        st.parts[i] = Part::InFlight;
        Some(i)
    }

    /// Fetches part `i`: from the shared tier when it has the block, else (or for what
    /// it could not give) from the origin, `from` to the part's end, then the head
    /// before `from`.
    async fn run_part(self: &Arc<Self>, i: usize, first: Option<First>, from: u64) {
        let part = self.part_range(i);
        let ((lo, corrupt), origin_body) = match first {
            Some(First::Origin(body)) => ((part.start, false), Some(body)),
            Some(First::Shared(r)) => (self.land_shared(i, Some(*r)).await, None),
            None if self.blocks.is_some() => (self.land_shared(i, None).await, None),
            None => ((part.start, false), None),
        };
        if let Some(f) = self.state.lock().from.get_mut(i) {
            *f = match (lo == part.start, lo >= part.end) {
                // A corrupt block was deleted: this part, verified with the rest of the
                // object, takes its place.
                _ if corrupt => PartFrom::Replace,
                (true, _) => PartFrom::Origin,
                (false, true) => PartFrom::Shared,
                (false, false) => PartFrom::Both,
            };
        }
        let from = from.clamp(lo, part.end);
        let mut fetched = if from < part.end {
            self.fetch_range(from..part.end, origin_body).await
        } else {
            Ok(())
        };
        if fetched.is_ok() && from > lo {
            fetched = self.fetch_range(lo..from, None).await;
        }
        match fetched {
            Ok(()) => {
                // No part at all for an empty object some servers answer with a 206.
                if let Some(p) = self.state.lock().parts.get_mut(i) {
                    *p = Part::Done;
                }
                self.bump();
            }
            Err(f) => {
                warn!(key = %self.key, part = i, failure = ?f, "fill abandoned");
                self.finish(Err(f));
            }
        }
    }

    /// Downloads `range` (within one part), resuming from the last byte received after a
    /// failure.
    async fn fetch_range(
        &self,
        range: Range<u64>,
        mut first: Option<ByteStream>,
    ) -> Result<(), FillFailure> {
        let mut pos = range.start;
        let mut attempt = 0u32;
        let mut last_err = String::new();
        while pos < range.end {
            if self.outcome().is_some() {
                return Ok(());
            }
            if attempt >= PART_ATTEMPTS {
                return Err(FillFailure::Failed(last_err));
            }
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            attempt += 1;
            let mut body = match first.take() {
                Some(b) => b,
                None => match self
                    .ctx
                    .store
                    .get_range(
                        &self.bucket,
                        &self.key,
                        Some(pos..range.end),
                        Some(&self.etag),
                    )
                    .await
                {
                    Ok(g) => g.body,
                    Err(StoreError::PreconditionFailed(_)) | Err(StoreError::NotFound(_)) => {
                        return Err(FillFailure::Changed);
                    }
                    Err(e) => {
                        last_err = e.to_string();
                        continue;
                    }
                },
            };
            while pos < range.end {
                let chunk = match body.next().await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        last_err = e.to_string();
                        break;
                    }
                    None => {
                        last_err = format!("body ended at byte {pos} of part {range:?}");
                        break;
                    }
                };
                let take = chunk.len().min((range.end - pos) as usize);
                let Some(file) = self.file() else {
                    return Ok(());
                };
                write_all_at(&file, &chunk[..take], pos).map_err(|e| {
                    let why = format!("writing {}: {e}", self.tmp_name);
                    match e.raw_os_error() {
                        Some(libc::ENOSPC | libc::EDQUOT) => FillFailure::NoSpace(why),
                        _ => FillFailure::Failed(why),
                    }
                })?;
                self.state.lock().landed.insert(pos..pos + take as u64);
                if pos == 0
                    && let Some(asked) = self.cold_open.lock().take()
                {
                    let m = &self.ctx.metrics;
                    m.first_byte(&self.bucket, ORIGIN, asked.elapsed());
                }
                pos += take as u64;
                add(&self.ctx.stats.bytes_from_s3, take as u64);
                self.bump();
                if self.outcome().is_some() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A sequential worker: fetches the lowest pending part until none is left.
    async fn sequential_parts(self: &Arc<Self>) {
        while let Some(i) = self.next_pending() {
            let from = self.part_range(i).start;
            self.run_part(i, None, from).await;
        }
    }

    /// Returns once the first bytes of the object have landed, the fill has ended, or
    /// [`FIRST_BYTES_WAIT`] has passed.
    async fn first_bytes_landed(&self) {
        let landed = self.progress_until(|st| st.landed.prefix_len() > 0 || st.outcome.is_some());
        let _ = tokio::time::timeout(FIRST_BYTES_WAIT, landed).await;
    }

    /// Returns once `done` holds for the fill's state (looked at after every change).
    async fn progress_until(&self, done: impl Fn(&State) -> bool) {
        let mut rx = self.progress.subscribe();
        loop {
            rx.borrow_and_update();
            if done(&self.state.lock()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Runs the whole fill: `workers` sequential workers (the first one starting with
    /// `first`, the already open body of part 0) plus a checksum pass that follows the
    /// landed prefix. Returns the file's checksums when every byte landed and verified.
    pub(crate) async fn run(
        self: &Arc<Self>,
        workers: usize,
        mut first: Option<First>,
    ) -> Result<Checksums, FillFailure> {
        let mut tasks = Vec::new();
        if let Some(body) = first.take() {
            // Part 0 is already on its way (`mark_first_in_flight`).
            // Its worker goes on with the next parts like the others.
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                me.run_part(0, Some(body), 0).await;
                me.sequential_parts().await;
            }));
            // Someone is waiting for the first bytes: let them land before more
            // connections and the checksum thread compete for the CPU.
            self.first_bytes_landed().await;
        }
        let hasher = {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.checksum_pass())
        };
        let started = tasks.len();
        for _ in started..workers.max(1) {
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.sequential_parts().await }));
        }
        for t in tasks {
            let _ = t.await;
        }
        // Out-of-order parts may still be on their way.
        self.progress_until(|st| {
            matches!(st.outcome, Some(Err(_))) || st.parts.iter().all(|p| *p == Part::Done)
        })
        .await;
        if let Some(Err(f)) = self.outcome() {
            return Err(f);
        }
        match hasher.await {
            Ok(r) => r,
            Err(e) => Err(FillFailure::Failed(format!("checksum task: {e}"))),
        }
    }

    /// CRC32s (whole file and per block, always) and MD5 (when the ETag is a plain MD5)
    /// over the file in order, as its prefix lands, so verification costs no extra pass
    /// at the end.
    fn checksum_pass(self: &Arc<Self>) -> Result<Checksums, FillFailure> {
        let mut rx = self.progress.subscribe();
        let mut sums = ChecksumBuilder::default();
        let want_md5 = plain_md5(&self.etag);
        let mut md5 = want_md5.as_ref().map(|_| Md5::new());
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        let mut done = 0u64;
        loop {
            rx.borrow_and_update();
            let (prefix, outcome) = {
                let st = self.state.lock();
                (st.landed.prefix_len(), st.outcome.clone())
            };
            if let Some(Err(f)) = outcome {
                return Err(f);
            }
            while done < prefix {
                let n = ((prefix - done) as usize).min(buf.len());
                let Some(file) = self.file() else {
                    return Err(FillFailure::Failed("fill closed".into()));
                };
                let got = file
                    .read_at(&mut buf[..n], done)
                    .map_err(|e| FillFailure::Failed(format!("reading back: {e}")))?;
                if got == 0 {
                    return Err(FillFailure::Failed(
                        "file shorter than its landed bytes".into(),
                    ));
                }
                sums.update(&buf[..got]);
                if let Some(h) = &mut md5 {
                    h.update(&buf[..got]);
                }
                done += got as u64;
            }
            if done >= self.size {
                break;
            }
            // Poll rather than block on the channel: this thread holds the fill, so a
            // fill whose tasks were dropped (runtime shutdown) must still let it go.
            while !rx.has_changed().unwrap_or(true) {
                if Arc::strong_count(self) <= 1 {
                    return Err(FillFailure::Failed("fill dropped".into()));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if let (Some(h), Some(want)) = (md5, want_md5) {
            let got = hex::encode(h.finalize());
            if got != want {
                return Err(FillFailure::Failed(format!(
                    "MD5 {got} does not match ETag {want}"
                )));
            }
        }
        Ok(sums.finish())
    }
}

/// Why a read on a filling object could not be answered from the fill.
#[derive(Debug)]
pub(crate) enum ReadMiss {
    Changed,
    Failed(String),
}

impl From<ReadMiss> for CacheError {
    fn from(m: ReadMiss) -> CacheError {
        match m {
            ReadMiss::Changed => CacheError::Store(StoreError::PreconditionFailed(
                "object changed while being read".into(),
            )),
            ReadMiss::Failed(why) => CacheError::Internal(why),
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 100u64 << attempt.min(6);
    let capped = base.min(5_000);
    Duration::from_millis(capped / 2 + rand::random::<u64>() % (capped / 2 + 1))
}

pub(crate) fn pread(file: &File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(Bytes::from(buf))
}

pub(crate) fn write_all_at(file: &File, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !data.is_empty() {
        match file.write_at(data, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

mod shared;
#[cfg(test)]
mod tests;
