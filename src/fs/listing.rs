//! Directory listings from S3: listed again when older than the metadata TTL, the last
//! one served while S3 cannot be asked, keys that cannot be names skipped; and the
//! `opendir`/`readdir` handles over them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::inode::NodeData;
use super::{DirEntry, FsError, Kind, ROOT_INO, S3Fs, STATS_INO, STATS_NAME};
use crate::store::{ObjectMeta, StoreError};

impl S3Fs {
    /// Lists the root ahead of the first lookup. A failure is only logged: the mount
    /// already checked access, and the next lookup tries again.
    pub async fn prime_root(&self) {
        match self.listing(ROOT_INO).await {
            Ok(e) => debug!(entries = e.len(), "root listed ahead of use"),
            Err(e) => debug!(error = %e, "listing the root ahead of use failed"),
        }
    }

    /// The children of a directory, listed again from S3 when older than the TTL. When S3
    /// cannot be asked (unreachable, timing out, failing), the last listing is served
    /// instead, if there is one (stale-if-error, counted in `stale_served`).
    pub(super) async fn listing(&self, dir: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        let (bucket, prefix, last) = {
            let inodes = self.inodes.lock();
            let node = inodes.get(dir).ok_or(FsError::NotFound)?;
            let NodeData::Dir {
                bucket,
                prefix,
                children,
            } = &node.data
            else {
                return Err(FsError::NotADirectory);
            };
            if let Some((Some(at), entries)) = children
                && self.fresh(*at)
            {
                return Ok(entries.clone());
            }
            let last = children.as_ref().map(|(_, e)| e.clone());
            (bucket.clone(), prefix.clone(), last)
        };
        // With a last listing to fall back on, S3 gets a few seconds per page, as the ETag
        // check of a cached file does, not the whole read timeout: an `ls` or the lookup
        // before a cached `cat` answers soon when S3 has stopped answering.
        let cfg = self.cache.config();
        let within = match last {
            Some(_) => cfg.check_within(),
            None => cfg.read_timeout,
        };
        match (self.list_from_s3(dir, bucket, prefix, within).await, last) {
            (Ok(entries), _) => Ok(entries),
            (Err(e), Some(last)) if e.is_transient() => {
                debug!(dir, error = %e, "S3 cannot be asked; serving the last listing");
                self.cache.count_stale_served();
                Ok(last)
            }
            (Err(e), _) => {
                if !matches!(e, StoreError::NotFound(_) | StoreError::Unavailable(_)) {
                    warn!(dir, error = %e, "listing failed");
                }
                Err(FsError::from_store(e))
            }
        }
    }

    /// Lists `dir` (`bucket` and `prefix` are its place in S3) and makes it the current
    /// listing.
    pub(super) async fn list_from_s3(
        &self,
        dir: u64,
        bucket: Option<String>,
        prefix: String,
        within: std::time::Duration,
    ) -> Result<Arc<Vec<DirEntry>>, StoreError> {
        let fetched_at = Instant::now();
        let (dirs, files) = match &bucket {
            None => (
                self.cache.store().list_buckets_within(within).await?,
                Vec::new(),
            ),
            Some(b) => self.names_under(dir, b, &prefix, within).await?,
        };
        let entries = {
            let mut inodes = self.inodes.lock();
            // A listing started later may have landed first: it is the newer one.
            if let Some(newer) = inodes.listing_after(dir, fetched_at) {
                return Ok(newer);
            }
            let mut out = Vec::with_capacity(dirs.len() + files.len());
            for name in dirs {
                let (b, p) = match &bucket {
                    None => (name.clone(), String::new()),
                    Some(b) => (b.clone(), format!("{prefix}{name}/")),
                };
                let ino = inodes.dir_child(dir, &name, b, p);
                out.push(DirEntry {
                    ino,
                    kind: Kind::Dir,
                    name,
                });
            }
            for (name, meta) in files {
                let b = bucket.clone().unwrap_or_default();
                let ino = inodes.file_child(dir, &name, b, meta, fetched_at);
                out.push(DirEntry {
                    ino,
                    kind: Kind::File,
                    name,
                });
            }
            let out = Arc::new(out);
            inodes.set_children(dir, fetched_at, out.clone());
            out
        };
        debug!(dir, entries = entries.len(), "listed directory");
        Ok(entries)
    }

    /// The subdirectories and files of `prefix` in `bucket`, as names: keys that cannot
    /// be names skipped, an object hidden by a directory of its name (or, at the root,
    /// by `.cache-stats`), each with one warning.
    async fn names_under(
        &self,
        dir: u64,
        b: &str,
        prefix: &str,
        within: std::time::Duration,
    ) -> Result<(Vec<String>, Vec<(String, ObjectMeta)>), StoreError> {
        let listing = self
            .cache
            .store()
            .list_within(b, prefix, Some("/"), within)
            .await?;
        let mut dirs = Vec::new();
        for p in listing.prefixes {
            let name = p.strip_prefix(prefix).unwrap_or(&p);
            let name = name.strip_suffix('/').unwrap_or(name);
            if self.valid_name(name, b, &p) {
                dirs.push(name.to_string());
            }
        }
        let dir_names: HashSet<&str> = dirs.iter().map(String::as_str).collect();
        let mut taken = HashSet::new();
        let mut files = Vec::new();
        for o in listing.objects {
            let name = o.key.strip_prefix(prefix).unwrap_or(&o.key);
            // "dir/" itself: a directory marker, not a file.
            if name.is_empty() || !self.valid_name(name, b, &o.key) {
                continue;
            }
            if dir_names.contains(name) {
                self.warn_once(&o.key, || {
                    warn!(key = %crate::cache::s3_url(b, &o.key), "object hidden: a directory of the same name wins")
                });
                continue;
            }
            if dir == ROOT_INO && name == STATS_NAME {
                self.warn_once(&o.key, || {
                    warn!(key = %crate::cache::s3_url(b, &o.key), "object hidden by the virtual .cache-stats file")
                });
                continue;
            }
            if taken.insert(name.to_string()) {
                files.push((name.to_string(), o));
            }
        }
        Ok((dirs, files))
    }

    pub(super) fn valid_name(&self, name: &str, bucket: &str, key: &str) -> bool {
        let why = if name.is_empty() {
            "an empty path segment"
        } else if name == "." || name == ".." {
            "a '.' or '..' segment"
        } else if name.len() > 255 {
            "a segment longer than 255 bytes"
        } else if name.contains('\0') {
            "a NUL byte"
        } else if name.contains('/') {
            // Only from a server that ignored the delimiter: the kernel would fail the
            // whole directory's listing on it.
            "a '/' within a name"
        } else {
            return true;
        };
        self.warn_once(key, || {
            warn!(key = %crate::cache::s3_url(bucket, key), "skipping key: {why} cannot be a file name")
        });
        false
    }

    pub(super) fn warn_once(&self, key: &str, f: impl FnOnce()) {
        if self.warned.lock().insert(key.to_string()) {
            f();
        }
    }

    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let children = self.listing(ino).await.map_err(|e| self.counted(e))?;
        let parent = self
            .inodes
            .lock()
            .get(ino)
            .map(|n| n.parent)
            .unwrap_or(ROOT_INO);
        let mut entries = Vec::with_capacity(children.len() + 3);
        entries.push(DirEntry {
            ino,
            kind: Kind::Dir,
            name: ".".into(),
        });
        entries.push(DirEntry {
            ino: parent,
            kind: Kind::Dir,
            name: "..".into(),
        });
        if ino == ROOT_INO {
            entries.push(DirEntry {
                ino: STATS_INO,
                kind: Kind::File,
                name: STATS_NAME.into(),
            });
        }
        entries.extend(children.iter().cloned());
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// The whole snapshot taken at opendir; the caller skips to the kernel's offset
    /// (offsets index this snapshot, so they stay valid however large the directory and
    /// whatever changes meanwhile).
    pub fn readdir(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        self.dirs.lock().get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }
}
