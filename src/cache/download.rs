//! Downloads into the cache: one per key however many opens want it. An open starts
//! the download of its object or joins the one under way ([`Cache::fill_or_join`]); the
//! download's start makes room for it and hands the transfer to a [`Fill`]
//! (`fill.rs`); its finish queues it for the disk half's group commit, or cleans up.

use std::sync::Arc;
use std::time::Duration;

use futures::future::FutureExt;
use tracing::warn;

use super::checksum::Checksums;
use super::config::CacheError;
use super::disk::{Disk, Flight, Pending};
use super::fill::{Blocks, Fill, FillCtx, FillFailure, First};
use super::key::CacheKey;
use super::shared::OpenFile;
use super::shared::block::Version;
use super::stats::bump;
use super::{Cache, Inner};
use crate::store::s3_url;
use crate::store::{ObjectMeta, StoreError};

/// How [`Cache::fill_or_join`] found the object's download.
pub(super) enum Download {
    /// This call started it.
    Started(Arc<Fill>),
    /// It was under way already (started by another open, or ahead of use).
    Joined(Arc<Fill>),
}

impl Cache {
    /// Starts the download of `k`, or joins the one under way: one download per key
    /// however many callers want it. `Ok(None)` means the object landed in the index
    /// meanwhile: look there again.
    pub(super) async fn fill_or_join(
        &self,
        k: CacheKey,
        bucket: &str,
        key: &str,
        meta: Option<ObjectMeta>,
        supersede: Option<Arc<Fill>>,
        may_evict: bool,
    ) -> Result<Option<Download>, CacheError> {
        let Some(disk) = &self.inner.disk else {
            return Err(CacheError::Internal("cache is off".into()));
        };
        let (flight, joined) = {
            let mut flights = disk.flights.lock();
            let current = flights
                .get(&k)
                .filter(|(id, _)| supersede.as_ref().is_none_or(|s| s.flight != *id));
            if let Some((_, f)) = current {
                (f.clone(), true)
            } else {
                // A fill commits to the index before it leaves `flights`, so looking at
                // the index under this lock cannot miss a download that just finished.
                if disk.index.lock().contains(&k) {
                    return Ok(None);
                }
                let inner = self.inner.clone();
                let (bucket, key) = (bucket.to_string(), key.to_string());
                let id = disk
                    .next_flight
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A task of its own, so a caller that gives up does not cancel the others.
                let task = tokio::spawn(async move {
                    let started = inner
                        .start_fill(id, k, &bucket, &key, meta, may_evict)
                        .await;
                    if started.is_err()
                        && let Some(d) = &inner.disk
                    {
                        let mut flights = d.flights.lock();
                        if flights.get(&k).is_some_and(|(i, _)| *i == id) {
                            flights.remove(&k);
                        }
                    }
                    started.map_err(Arc::new)
                });
                let f: Flight = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(Arc::new(CacheError::Internal(format!(
                            "download task: {e}"
                        ))))
                    })
                }
                .boxed()
                .shared();
                flights.insert(k, (id, f.clone()));
                (f, false)
            }
        };
        match flight.await {
            Ok(fill) if joined => Ok(Some(Download::Joined(fill))),
            Ok(fill) => Ok(Some(Download::Started(fill))),
            Err(e) => Err(match &*e {
                CacheError::Store(se) => CacheError::Store(se.clone()),
                CacheError::TooLarge(t) => CacheError::TooLarge(t.clone()),
                CacheError::NoRoom(n) => CacheError::NoRoom(*n),
                CacheError::Full(n) => CacheError::Full(*n),
                other => CacheError::Internal(other.to_string()),
            }),
        }
    }

    /// Waits until no download is under way (tests and tools that want a settled cache).
    pub async fn wait_for_downloads(&self) {
        self.wait_while_any_flight(None, |_| true).await;
    }

    /// Waits, at most `limit`, for the downloads whose bytes have all landed to be verified
    /// and committed, so that at unmount a file just read to its end stays cached.
    /// Downloads still waiting for bytes from S3 are not waited for.
    pub async fn settle_landed_downloads(&self, limit: Duration) {
        self.wait_while_any_flight(
            Some(limit),
            |f| matches!(f.peek(), Some(Ok(fill)) if fill.all_landed() && fill.outcome().is_none()),
        )
        .await;
    }

    /// Polls the downloads in flight until none matches `busy`, or `limit` has passed.
    async fn wait_while_any_flight(&self, limit: Option<Duration>, busy: impl Fn(&Flight) -> bool) {
        let Some(disk) = &self.inner.disk else { return };
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        while disk.flights.lock().values().any(|(_, f)| busy(f)) {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Opens the cache file of a verified fill, for its uploads to the shared tier: the
/// download's own file while the fill is alive, then the entry in the cache if it is
/// still of this version; `None` once the cache no longer has it.
fn cache_file_opener(fill: &Arc<Fill>, disk: &Arc<Disk>) -> OpenFile {
    let (fill_w, disk_w) = (Arc::downgrade(fill), Arc::downgrade(disk));
    let (k, etag) = (fill.cache_key, fill.etag.clone());
    Arc::new(move || {
        if let Some(file) = fill_w.upgrade().and_then(|f| f.file()) {
            return Some(file);
        }
        let disk = disk_w.upgrade()?;
        let current = disk.index.lock().peek(&k).is_some_and(|e| e.etag == etag);
        if !current {
            return None;
        }
        let file = disk.layout.open_entry(&k).ok()?;
        // Replaced between the look and the open: not the version to share.
        let still = disk.index.lock().peek(&k).is_some_and(|e| e.etag == etag);
        still.then(|| Arc::new(file))
    })
}

impl Inner {
    /// Starts a fill with one round trip: the GET of the first part also says which
    /// version and how big the object is. Makes room for it, then hands the rest of the
    /// download to a task of its own.
    async fn start_fill(
        self: &Arc<Self>,
        flight: u64,
        k: CacheKey,
        bucket: &str,
        key: &str,
        known: Option<ObjectMeta>,
        may_evict: bool,
    ) -> Result<Arc<Fill>, CacheError> {
        let asked = std::time::Instant::now();
        let disk = self.disk()?;
        let part = self.cfg.part_size.max(64 * 1024);
        let (etag, size, first) = self.first_part(bucket, key, part, known).await?;
        match disk.reserve_room(&k, size, may_evict) {
            Err(CacheError::Full(_)) if !disk.pending.lock().is_empty() => {
                // Room held by complete downloads awaiting their group commit: commit
                // them now, so they can be evicted like any other entry.
                let d = disk.clone();
                let _ = tokio::task::spawn_blocking(move || d.commit_pending()).await;
                disk.reserve_room(&k, size, may_evict)?;
            }
            other => other?,
        }
        let (tmp_name, tmp) = match disk.layout.create_temp(&k) {
            Ok(t) => t,
            Err(e) => {
                disk.index.lock().unreserve(size);
                return Err(e.into());
            }
        };
        if let Err(source) = tmp.set_len(size) {
            disk.index.lock().unreserve(size);
            disk.layout.remove_temp(&tmp_name);
            return Err(CacheError::Io {
                path: disk.layout.dir().join(&tmp_name),
                source,
            });
        }
        let mut fill = Fill::new(
            flight,
            k,
            bucket,
            key,
            &etag,
            size,
            tmp,
            tmp_name,
            part,
            FillCtx {
                store: self.store.clone(),
                stats: self.stats.clone(),
                metrics: self.cfg.metrics.clone(),
            },
        );
        fill.read_ahead = !may_evict;
        fill.blocks = self.blocks_of(bucket, key, &etag, size, part);
        fill.first_from_shared = matches!(first, Some(First::Shared(_)));
        fill.started = asked;
        // Only an open waits for these bytes; a download ahead of use has no one waiting.
        fill.cold_open = parking_lot::Mutex::new(may_evict.then_some(asked));
        let fill = Arc::new(fill);
        if first.is_some() {
            fill.mark_first_in_flight();
        }
        self.stats
            .downloads_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (me, f) = (self.clone(), fill.clone());
        tokio::spawn(async move {
            let result = f.run(me.cfg.fill_concurrency, first).await;
            me.finish_fill(&f, result);
        });
        Ok(fill)
    }

    /// The shared tier's name for this object version, when the tier takes it.
    fn blocks_of(
        &self,
        bucket: &str,
        key: &str,
        etag: &str,
        size: u64,
        part: u64,
    ) -> Option<Blocks> {
        let tier = self
            .shared
            .as_ref()
            .filter(|t| t.takes(size) && !etag.is_empty())?;
        Some(Blocks {
            tier: tier.clone(),
            version: Version::new(&tier.config().origin, bucket, key, etag, part, size),
        })
    }

    /// The GET of a fill's first part, which also says which version and how big the
    /// object is: (ETag, size, the part's body when there is one to read). With the
    /// version known, the shared tier is asked first.
    async fn first_part(
        &self,
        bucket: &str,
        key: &str,
        part: u64,
        known: Option<ObjectMeta>,
    ) -> Result<(String, u64, Option<First>), CacheError> {
        let mut known = known;
        if known.as_ref().is_none_or(|m| m.etag.is_none())
            && self.shared.as_ref().is_some_and(|t| t.takes(1))
        {
            // The tier names blocks by ETag, which a listing without ETags (some
            // S3-compatible servers) did not give: a HEAD costs no bytes from the origin.
            known = Some(self.store.head(bucket, key).await?);
        }
        let known_etag = known.as_ref().and_then(|m| m.etag.clone());
        if let (Some(etag), Some(m)) = (&known_etag, &known)
            && let Some(b) = self.blocks_of(bucket, key, etag, m.size, part)
            && let Ok(r) = b.tier.open_block(&b.version, 0).await
        {
            return Ok((
                etag.clone(),
                r.object_size(),
                Some(First::Shared(Box::new(r))),
            ));
        }
        let mut first = self
            .store
            .get_range(bucket, key, Some(0..part), known_etag.as_deref())
            .await;
        if known_etag.is_some() && matches!(first, Err(StoreError::PreconditionFailed(_))) {
            // What we knew is out of date: take whatever version is there now.
            first = self.store.get_range(bucket, key, Some(0..part), None).await;
        }
        Ok(match first {
            Ok(g) if !g.etag.is_empty() => (g.etag, g.object_size, Some(First::Origin(g.body))),
            Ok(_) => {
                // No ETag in the answer: ask for it, and pin the fill to it.
                let m = self.store.head(bucket, key).await?;
                (m.etag.unwrap_or_default(), m.size, None)
            }
            Err(StoreError::NotFound(u)) => return Err(StoreError::NotFound(u).into()),
            Err(e) => {
                // An empty object cannot be fetched by range (416): HEAD tells.
                match self.store.head(bucket, key).await {
                    Ok(m) if m.size == 0 => (m.etag.unwrap_or_default(), 0, None),
                    _ => return Err(e.into()),
                }
            }
        })
    }

    /// Commits a complete, verified fill to the cache, or cleans up after a failed one.
    fn finish_fill(&self, fill: &Arc<Fill>, result: Result<Checksums, FillFailure>) {
        let Some(disk) = &self.disk else { return };
        let url = s3_url(&fill.bucket, &fill.key);
        match result {
            Ok(sums) => {
                if fill.blocks.is_some() {
                    fill.share_origin_parts(cache_file_opener(fill, disk));
                }
                let took = fill.started.elapsed();
                let m = &self.cfg.metrics;
                m.filled(&fill.bucket, fill.tier(), fill.size, took);
                // The flight ends when the committer has put it in the index (or found
                // it replaced by a newer version's download, and dropped it).
                disk.pending.lock().push(Pending {
                    fill: fill.clone(),
                    sums,
                });
                disk.commit_due.notify_one();
                return;
            }
            Err(f) => {
                // Closes the download's file for every handle of it, and unlinks it, so
                // its space comes back now; then its room in the limits. Handles of it
                // read S3 from here on.
                fill.finish(Err(f.clone()));
                disk.layout.remove_temp(&fill.tmp_name);
                disk.index.lock().unreserve(fill.size);
                match &f {
                    FillFailure::Failed(why) => {
                        bump(&self.stats.downloads_failed);
                        warn!(%url, %why, "download failed; reads go to S3 directly");
                    }
                    FillFailure::NoSpace(why) => {
                        bump(&self.stats.disk_full_events);
                        bump(&self.stats.not_kept);
                        let free = disk.layout.space().map_or(0, |s| s.available);
                        warn!(
                            %url, %why, dir = %disk.layout.dir().display(), free_bytes = free,
                            "cache disk full: this download is dropped and read from S3; the \
                             cache now keeps within the disk's free space"
                        );
                        // Other files took the room: keep within what the disk has now.
                        disk.trim_to_limits();
                    }
                    FillFailure::Changed | FillFailure::Cancelled => {}
                }
            }
        }
        disk.end_flight(fill);
    }
}
