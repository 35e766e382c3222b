//! What an open returns: [`ObjectHandle`], and where its reads go ([`Source`]): a
//! complete cache file (each block checked against its checksum once per handle), a
//! download under way, or S3 directly. Whatever the cache cannot serve is read from S3.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::debug;

use super::Inner;
use super::checksum;
use super::config::CacheError;
use super::db::BLOCK_SIZE;
use super::direct::DirectReader;
use super::fill::{self, Fill};
use super::key::CacheKey;
use super::stats::add;
use crate::store::s3_url;

/// An open object: either a local file holding exactly the version `etag`, or a direct
/// line to S3 (cache off, object too large, cache unusable).
#[derive(Clone)]
pub struct ObjectHandle {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    /// How the open was answered, for logs and tests.
    pub outcome: Outcome,
    source: Source,
    /// Where reads go once the cache cannot answer them (the fill failed, a block of the
    /// cache file did not match its checksum): one streaming reader of this version for
    /// the handle's life, so sequential reads keep their read-ahead window.
    fallback: Arc<OnceLock<Arc<DirectReader>>>,
    inner: Arc<Inner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// Served from the cache because validation failed for a transient reason.
    StaleHit,
    Miss,
    /// Not cached: reads go to S3.
    Direct,
}

#[derive(Clone)]
pub(super) enum Source {
    /// A complete cache file. Already unlinked files keep working: an evicted or replaced
    /// entry's open handles go on reading the bytes they opened.
    File(Arc<CachedFile>),
    /// A download under way into the cache.
    Filling(Arc<Fill>),
    Direct(Arc<DirectReader>),
}

/// A complete cache file open for reading, with the checksums its reads are checked
/// against (each block once per open handle, before its bytes are served).
pub(super) struct CachedFile {
    pub(super) file: Arc<File>,
    pub(super) key: CacheKey,
    /// The entry this file was opened as (its creation time), so a mismatch drops this
    /// entry and not a newer one of the same key.
    pub(super) created_ms: u64,
    /// The block checksums, read from the index on the first read through s3cachefs
    /// (a passthrough open never needs them: the kernel reads without us).
    pub(super) blocks: OnceLock<Vec<u32>>,
    pub(super) checked: Mutex<Vec<bool>>,
    /// Set when a block did not match: the rest of this handle's reads go to S3.
    pub(super) corrupt: AtomicBool,
}

impl CachedFile {
    /// Checks the blocks under `offset..end` not checked yet by this handle. `Ok(false)`:
    /// one does not match.
    fn check(&self, inner: &Inner, offset: u64, end: u64) -> io::Result<bool> {
        let blocks = self.blocks.get_or_init(|| {
            let blocks = inner
                .disk
                .as_ref()
                .and_then(|d| d.db.row(&self.key).ok().flatten())
                .map(|r| r.blocks)
                .unwrap_or_default();
            *self.checked.lock() = vec![false; blocks.len()];
            blocks
        });
        if blocks.is_empty() || offset >= end {
            return Ok(true);
        }
        let first = (offset / BLOCK_SIZE) as usize;
        let last = ((end - 1) / BLOCK_SIZE) as usize;
        for b in first..=last {
            if self.checked.lock().get(b).copied().unwrap_or(true) {
                continue;
            }
            let Some(want) = blocks.get(b) else {
                return Ok(false);
            };
            let data = fill::pread(&self.file, b as u64 * BLOCK_SIZE, BLOCK_SIZE as usize)?;
            if checksum::block_crc(&data) != *want {
                return Ok(false);
            }
            if let Some(c) = self.checked.lock().get_mut(b) {
                *c = true;
            }
        }
        Ok(true)
    }
}

impl std::fmt::Debug for ObjectHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectHandle")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .field("etag", &self.etag)
            .field("size", &self.size)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl ObjectHandle {
    pub(super) fn new(
        inner: &Arc<Inner>,
        bucket: &str,
        key: &str,
        etag: &str,
        size: u64,
        outcome: Outcome,
        source: Source,
    ) -> ObjectHandle {
        ObjectHandle {
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: etag.to_string(),
            size,
            outcome,
            source,
            fallback: Arc::new(OnceLock::new()),
            inner: inner.clone(),
        }
    }

    /// The complete cache file, when this handle reads from one (for FUSE passthrough).
    /// Where the open's bytes come from, as the metrics' `tier` label says it: `local`
    /// (a cache file), `shared` (a download whose first part came from the shared tier)
    /// or `origin`.
    pub fn tier(&self) -> &'static str {
        match &self.source {
            Source::File(_) => crate::store::metrics::LOCAL,
            Source::Filling(f) if f.first_from_shared => crate::store::metrics::SHARED,
            Source::Filling(_) | Source::Direct(_) => crate::store::metrics::ORIGIN,
        }
    }

    pub fn file(&self) -> Option<&Arc<File>> {
        match &self.source {
            Source::File(f) => Some(&f.file),
            _ => None,
        }
    }

    /// Answers at once when the bytes are on local disk (a `pread` on the calling
    /// thread); `None` means they must be waited for or fetched: use [`Self::read`].
    pub fn try_read(&self, offset: u64, len: usize) -> Option<Result<Bytes, CacheError>> {
        let end = self.size.min(offset.saturating_add(len as u64));
        let r = match &self.source {
            Source::File(f) => {
                if offset >= end {
                    return Some(Ok(Bytes::new()));
                }
                if f.corrupt.load(Ordering::Relaxed) {
                    return None;
                }
                let r = match f.check(&self.inner, offset, end) {
                    Ok(true) => fill::pread(&f.file, offset, (end - offset) as usize),
                    Ok(false) => {
                        // A cache file exists only while the disk half does.
                        if let Some(disk) = &self.inner.disk {
                            disk.corrupt_file(f, &self.bucket, &self.key);
                        }
                        return None;
                    }
                    Err(e) => Err(e),
                };
                if let Ok(b) = &r {
                    add(&self.inner.stats.bytes_from_cache, b.len() as u64);
                }
                r
            }
            Source::Filling(fill) => {
                let r = fill.try_read(offset, len)?;
                // A hit on a download not yet committed: these bytes came from S3 once,
                // for the open that started it, not for this one.
                if self.outcome == Outcome::Hit
                    && let Ok(b) = &r
                {
                    add(&self.inner.stats.bytes_from_cache, b.len() as u64);
                }
                r
            }
            Source::Direct(_) => return None,
        };
        Some(r.map_err(|source| CacheError::Io {
            path: PathBuf::from(s3_url(&self.bucket, &self.key)),
            source,
        }))
    }

    /// Reads up to `len` bytes at `offset` (fewer only at the end of the object), within
    /// the read timeout all told.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Bytes, CacheError> {
        let deadline = tokio::time::Instant::now() + self.inner.cfg.read_timeout;
        if let Some(r) = self.try_read(offset, len) {
            return r;
        }
        match &self.source {
            Source::Direct(d) => Ok(d.read(offset, len, deadline).await?),
            // Half the time for the fill to bring the bytes, the rest for S3 directly.
            Source::Filling(fill) => match fill
                .read(offset, len, deadline - self.inner.cfg.read_timeout / 2)
                .await
            {
                Ok(b) => Ok(b),
                Err(fill::ReadMiss::Changed) => Err(fill::ReadMiss::Changed.into()),
                Err(fill::ReadMiss::Failed(why)) => {
                    // The cache cannot help; S3 still can (same version or nothing).
                    debug!(url = %s3_url(&self.bucket, &self.key), %why, "fill cannot serve; reading S3 directly");
                    self.read_s3(offset, len, deadline).await
                }
            },
            // A block that did not match its checksum: this version from S3 instead.
            Source::File(_) => self.read_s3(offset, len, deadline).await,
        }
    }

    /// A read straight from S3, of this handle's version, through the handle's one
    /// streaming reader: what a read falls back to when the cache cannot serve it.
    async fn read_s3(
        &self,
        offset: u64,
        len: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Bytes, CacheError> {
        let reader = self.fallback.get_or_init(|| {
            Arc::new(DirectReader::new(
                self.inner.store.clone(),
                self.inner.stats.clone(),
                &self.bucket,
                &self.key,
                &self.etag,
                self.size,
            ))
        });
        Ok(reader.read(offset, len, deadline).await?)
    }
}
