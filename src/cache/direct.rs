//! Reading straight from S3 (cache off, object larger than the cache, `O_DIRECT`, or a
//! fill that failed): one streaming GET per run of sequential reads, with a bounded
//! window of bytes kept around the read position so the kernel's overlapping and
//! slightly out-of-order reads do not restart the stream. Memory stays at about
//! [`WINDOW`] bytes per open handle, whatever the object size.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tracing::debug;

use super::stats::{Stats, add};
use crate::store::{ByteStream, ObjectStore, StoreError};

/// Bytes kept behind the newest read, and how far ahead a read may be and still be
/// served by reading on in the same stream.
const WINDOW: u64 = 8 << 20;

/// Times a body cut off (or silent) within one read is asked for again from the last byte
/// received, on top of the SDK's own retries of each request.
const RESUMES: u32 = 3;

pub(crate) struct DirectReader {
    store: Arc<dyn ObjectStore>,
    stats: Arc<Stats>,
    bucket: String,
    key: String,
    etag: String,
    size: u64,
    win: tokio::sync::Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Offset of the first byte in `chunks`.
    base: u64,
    chunks: VecDeque<Bytes>,
    buffered: u64,
    stream: Option<ByteStream>,
}

impl DirectReader {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        stats: Arc<Stats>,
        bucket: &str,
        key: &str,
        etag: &str,
        size: u64,
    ) -> DirectReader {
        DirectReader {
            store,
            stats,
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: etag.to_string(),
            size,
            win: tokio::sync::Mutex::new(Window::default()),
        }
    }

    /// Reads `offset..offset+len` (fewer bytes only at the end of the object) by
    /// `deadline`, resuming a body that is cut off or goes silent.
    pub(crate) async fn read(
        &self,
        offset: u64,
        len: usize,
        deadline: Instant,
    ) -> Result<Bytes, StoreError> {
        let end = self.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Bytes::new());
        }
        let Ok(mut w) = tokio::time::timeout_at(deadline, self.win.lock()).await else {
            return Err(self.late(offset));
        };
        let stream_pos = w.base + w.buffered;
        if w.stream.is_none() && stream_pos < end || offset < w.base || offset > stream_pos + WINDOW
        {
            // Start a new stream here (first read, a seek, or a read behind the window).
            *w = Window {
                base: offset,
                ..Window::default()
            };
        }
        let mut resumes = 0;
        while w.base + w.buffered < end {
            let pos = w.base + w.buffered;
            let next = match w.stream.as_mut() {
                Some(stream) => tokio::time::timeout_at(deadline, stream.next()).await,
                None => match self.get_from(pos, deadline).await {
                    Ok(body) => {
                        w.stream = Some(body);
                        continue;
                    }
                    // Counted as one more resume below, like a body cut off.
                    Err(e) => Ok(Some(Err(e))),
                },
            };
            let failure = match next {
                Ok(Some(Ok(chunk))) => {
                    add(&self.stats.bytes_from_s3, chunk.len() as u64);
                    w.buffered += chunk.len() as u64;
                    w.chunks.push_back(chunk);
                    continue;
                }
                Ok(Some(Err(e))) => e,
                Ok(None) => StoreError::Transient(format!(
                    "s3://{}/{}: body ended at byte {pos}, before byte {end}",
                    self.bucket, self.key
                )),
                Err(_) => self.late(pos),
            };
            w.stream = None;
            if !failure.is_transient() || resumes >= RESUMES || Instant::now() >= deadline {
                return Err(failure);
            }
            resumes += 1;
            debug!(url = %crate::store::s3_url(&self.bucket, &self.key), pos, error = %failure,
                "body cut off; resuming");
        }
        let out = copy_out(&w, offset, end);
        // Keep at most WINDOW bytes behind the end of this read.
        while w.buffered > WINDOW
            && w.chunks
                .front()
                .is_some_and(|c| w.base + (c.len() as u64) <= end.saturating_sub(WINDOW))
        {
            if let Some(c) = w.chunks.pop_front() {
                w.base += c.len() as u64;
                w.buffered -= c.len() as u64;
            }
        }
        Ok(out)
    }

    /// A GET of the rest of the object from `pos`, of this version only, by `deadline`.
    async fn get_from(&self, pos: u64, deadline: Instant) -> Result<ByteStream, StoreError> {
        let if_match = (!self.etag.is_empty()).then_some(self.etag.as_str());
        let get = self
            .store
            .get_range(&self.bucket, &self.key, Some(pos..self.size), if_match);
        match tokio::time::timeout_at(deadline, get).await {
            Ok(got) => Ok(got?.body),
            Err(_) => Err(self.late(pos)),
        }
    }

    /// The error of a read whose deadline passed before its bytes came.
    fn late(&self, pos: u64) -> StoreError {
        StoreError::Transient(format!(
            "s3://{}/{}: no bytes from {pos} within the read timeout",
            self.bucket, self.key
        ))
    }
}

fn copy_out(w: &Window, start: u64, end: u64) -> Bytes {
    let mut out = BytesMut::with_capacity((end - start) as usize);
    let mut at = w.base;
    for c in &w.chunks {
        let c_end = at + c.len() as u64;
        if c_end > start && at < end {
            let from = start.saturating_sub(at) as usize;
            let to = (end.min(c_end) - at) as usize;
            out.extend_from_slice(&c[from..to]);
        }
        at = c_end;
        if at >= end {
            break;
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[tokio::test]
    async fn sequential_and_overlapping_reads_share_one_stream() {
        let store = Arc::new(MemoryStore::new());
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let etag = store.put("b", "k", data.clone());
        let r = DirectReader::new(
            store.clone(),
            Arc::new(Stats::default()),
            "b",
            "k",
            &etag,
            data.len() as u64,
        );
        for (off, len) in [
            (0u64, 1000usize),
            (1000, 5000),
            (500, 100),
            (6000, 994_000),
            (999_990, 100),
        ] {
            let deadline = Instant::now() + Duration::from_secs(5);
            let got = r.read(off, len, deadline).await.expect("read");
            let end = (off as usize + len).min(data.len());
            assert_eq!(&got[..], &data[off as usize..end], "read at {off}");
        }
        assert_eq!(store.gets.load(Ordering::Relaxed), 1);
    }
}
