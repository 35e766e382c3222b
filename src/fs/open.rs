//! Opening and reading files: an open resolves the object's version through the cache
//! (`ESTALE` when a newer version means a new inode), reads go to the handle, and opens
//! in directory order start read-ahead of the next files.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::inode::{Node, NodeData};
use super::{FsError, Kind, OpenFile, Opened, RETRY_WINDOW, S3Fs, STATS_INO};
use crate::cache::{ObjectHandle, Outcome};
use crate::store::{ObjectMeta, StoreError};

impl S3Fs {
    /// `write` is true for any open that asks to write or truncate.
    pub async fn open(
        self: &Arc<Self>,
        ino: u64,
        write: bool,
        direct: bool,
    ) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if ino == STATS_INO {
            self.files
                .lock()
                .insert(fh, OpenFile::Stats(self.stats_json()));
            return Ok(Opened {
                fh,
                direct_io: true,
                keep_cache: false,
                cache_file: None,
            });
        }
        let started = Instant::now();
        let (bucket, key, known, pinned) = self.what_to_open(ino)?;
        let known_etag = known.as_ref().and_then(|m| m.etag.clone());
        let handle = self.open_handle(ino, &bucket, &key, known, direct).await?;
        debug!(url = %crate::cache::s3_url(&bucket, &key), outcome = ?handle.outcome, "opened");
        // S3 said which version this is, unless the open trusted what was known and got
        // just that, or could not ask (a transient failure served the cached copy).
        let from_s3 = handle.outcome != Outcome::StaleHit
            && known_etag.as_deref() != Some(handle.etag.as_str());
        let confirmed = from_s3.then_some(started);
        let keep_cache = {
            let mut inodes = self.inodes.lock();
            if pinned {
                inodes.adopt_version(ino, &handle.etag, handle.size, confirmed);
            } else if !inodes.found_version(ino, &handle.etag, handle.size, confirmed) {
                debug!(url = %crate::cache::s3_url(&bucket, &key), etag = %handle.etag,
                    "a new version: the kernel must look the name up again");
                drop(inodes);
                self.refuse_stale(ino);
                return Err(FsError::Stale);
            }
            inodes.note_opened(ino, &handle.etag, handle.file().is_some())
        };
        let opened = Opened {
            fh,
            direct_io: false,
            keep_cache,
            cache_file: handle.file().cloned(),
        };
        let timer = self
            .cfg
            .read_metrics
            .for_open(&bucket, handle.outcome, handle.tier());
        self.files
            .lock()
            .insert(fh, OpenFile::Object(handle, timer));
        if !direct {
            self.read_ahead_after(ino);
        }
        Ok(opened)
    }

    /// The object behind `ino`: its bucket and key, what is known of its version if it
    /// can be trusted, and whether the inode is "pinned" (see `refuse_stale`).
    fn what_to_open(
        &self,
        ino: u64,
    ) -> Result<(String, String, Option<ObjectMeta>, bool), FsError> {
        let inodes = self.inodes.lock();
        let node = inodes.get(ino).ok_or(FsError::NotFound)?;
        // The name stands for a newer version now. ESTALE makes the kernel look the
        // path up again (LOOKUP_REVAL) and retry the open once, on the new inode;
        // an inode the retry cannot get away from is "pinned" (see `refuse_stale`).
        let pinned = if inodes.is_current(ino) {
            false
        } else if self.refuse_stale(ino) {
            return Err(FsError::Stale);
        } else {
            true
        };
        match &node.data {
            NodeData::Dir { .. } => Err(FsError::IsADirectory),
            NodeData::File {
                bucket,
                key,
                meta,
                learned,
                ..
            } => {
                let known =
                    (meta.etag.is_some() && self.fresh(*learned) && !pinned).then(|| meta.clone());
                Ok((bucket.clone(), key.clone(), known, pinned))
            }
        }
    }

    /// Opens the object through the cache (or straight from S3 for `O_DIRECT`), within
    /// the read timeout however many requests that takes (a HEAD, the first part).
    async fn open_handle(
        &self,
        ino: u64,
        bucket: &str,
        key: &str,
        known: Option<ObjectMeta>,
        direct: bool,
    ) -> Result<ObjectHandle, FsError> {
        let opening = async {
            if direct {
                self.cache.open_uncached(bucket, key).await
            } else {
                self.cache.open_object(bucket, key, known).await
            }
        };
        let within = self.cache.config().read_timeout;
        match tokio::time::timeout(within, opening).await {
            Ok(Ok(h)) => Ok(h),
            Ok(Err(e)) => {
                let err = FsError::from_cache(&e);
                if matches!(err, FsError::NotFound) {
                    self.inodes.lock().forget_listing_of(ino);
                } else if !matches!(e.store_error(), Some(StoreError::Unavailable(_))) {
                    warn!(url = %crate::cache::s3_url(bucket, key), error = %e, "open failed");
                }
                Err(self.counted(err))
            }
            Err(_) => {
                warn!(url = %crate::cache::s3_url(bucket, key), "open failed: no answer from S3 within the read timeout");
                Err(self.counted(FsError::Io("no answer from S3 in time".into())))
            }
        }
    }

    /// Records that an open of `ino` is answered ESTALE, and returns true; but returns
    /// false if it was answered so within [`RETRY_WINDOW`], for then this open is the
    /// kernel's retry and it came back to the same inode: the path leads to it whatever
    /// the lookup says (a file bind-mounted on its own, a reopen through /proc/self/fd).
    /// Such an inode is opened at the current version instead of failing every time.
    pub(super) fn refuse_stale(&self, ino: u64) -> bool {
        let now = Instant::now();
        let mut refused = self.refused.lock();
        refused.retain(|_, at| now.duration_since(*at) < RETRY_WINDOW);
        if refused.remove(&ino).is_some() {
            debug!(
                ino,
                "the retry came back to the same inode: opening it anyway"
            );
            return false;
        }
        refused.insert(ino, now);
        true
    }

    /// Directory read-ahead (see `readahead.rs`): starts downloads of the small files
    /// that follow `ino` in its directory when the opens there go in listing order.
    pub(super) fn read_ahead_after(self: &Arc<Self>, ino: u64) {
        if self.cfg.readahead_files == 0 {
            return;
        }
        let picks: Vec<(u64, String, String, ObjectMeta)> = {
            let inodes = self.inodes.lock();
            let Some(Node {
                parent,
                data: NodeData::File { key, .. },
                ..
            }) = inodes.get(ino)
            else {
                return;
            };
            let (parent, name) = (*parent, key.rsplit('/').next().unwrap_or(key));
            let Some(Node {
                data:
                    NodeData::Dir {
                        children: Some((_, entries)),
                        ..
                    },
                ..
            }) = inodes.get(parent)
            else {
                return;
            };
            // Found by name, not by a scan: this runs on every open, and listings come
            // sorted (S3 order), directories first.
            let files_from = entries.partition_point(|e| e.kind == Kind::Dir);
            let Ok(i) = entries[files_from..].binary_search_by(|e| e.name.as_str().cmp(name))
            else {
                return;
            };
            let pos = files_from + i;
            if entries[pos].ino != ino {
                return;
            }
            let ahead = self.readahead.lock().opened(parent, pos, entries.len());
            entries[ahead]
                .iter()
                .filter_map(|e| match inodes.get(e.ino).map(|n| &n.data) {
                    Some(NodeData::File {
                        bucket,
                        key,
                        meta,
                        learned,
                        ..
                    }) if meta.size <= self.cfg.readahead_max_size => {
                        let mut m = meta.clone();
                        if !self.fresh(*learned) {
                            m.etag = None;
                        }
                        Some((e.ino, bucket.clone(), key.clone(), m))
                    }
                    _ => None,
                })
                .collect()
        };
        for (ino, bucket, key, meta) in picks {
            let fs = self.clone();
            tokio::spawn(async move {
                match fs
                    .cache
                    .read_ahead(&bucket, &key, meta.size, Some(meta))
                    .await
                {
                    Ok(Some((etag, size))) => {
                        fs.inodes
                            .lock()
                            .found_version(ino, &etag, size, Some(Instant::now()));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        debug!(url = %crate::cache::s3_url(&bucket, &key), error = %e, "read-ahead skipped")
                    }
                }
            });
        }
    }

    /// Serves a read from a cache file or the stats snapshot without leaving the calling
    /// thread; `None` means it needs S3 and must go through [`S3Fs::read`].
    pub fn read_fast(&self, fh: u64, offset: u64, size: u32) -> Option<Result<Bytes, FsError>> {
        let files = self.files.lock();
        match files.get(&fh) {
            None => Some(Err(FsError::BadHandle)),
            Some(OpenFile::Stats(b)) => Some(Ok(slice(b, offset, size))),
            Some(OpenFile::Object(h, timer)) => {
                let (h, timer) = (h.clone(), timer.clone());
                drop(files);
                let started = timer.start();
                // Object reads only: passthrough tests watch this stay still.
                self.cache.count_read_request();
                let read = h.try_read(offset, size as usize)?;
                timer.done(started);
                Some(read.map_err(|e| self.counted(FsError::from_cache(&e))))
            }
        }
    }

    /// A read that may wait on S3 (call [`S3Fs::read_fast`] first).
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let (h, timer) = match self.files.lock().get(&fh) {
            Some(OpenFile::Object(h, timer)) => (h.clone(), timer.clone()),
            Some(OpenFile::Stats(b)) => return Ok(slice(b, offset, size)),
            None => return Err(FsError::BadHandle),
        };
        let started = timer.start();
        let read = h.read(offset, size as usize).await;
        timer.done(started);
        read.map_err(|e| {
            if !matches!(e.store_error(), Some(StoreError::Unavailable(_))) {
                warn!(url = %crate::cache::s3_url(&h.bucket, &h.key), error = %e, "read failed");
            }
            self.counted(FsError::from_cache(&e))
        })
    }

    /// The kernel reads this handle's cache file itself (passthrough): count its bytes
    /// as served from the cache, since its reads never reach us.
    pub fn passthrough_opened(&self, fh: u64) {
        let size = match self.files.lock().get(&fh) {
            Some(OpenFile::Object(h, _)) => h.size,
            _ => return,
        };
        self.cache.count_passthrough_open(size);
    }

    pub fn release(&self, fh: u64) {
        self.files.lock().remove(&fh);
    }
}

fn slice(b: &Bytes, offset: u64, size: u32) -> Bytes {
    let start = (offset as usize).min(b.len());
    let end = start.saturating_add(size as usize).min(b.len());
    b.slice(start..end)
}
