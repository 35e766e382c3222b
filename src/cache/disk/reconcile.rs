//! The check of the disk against the index at every start, and the opening of an index
//! that may be damaged: the half of [`Disk`] that recovers from a lost index or a crash.

use std::collections::HashSet;
use std::sync::Weak;
use std::sync::atomic::Ordering;

use tracing::{debug, info, warn};

use super::Disk;
use crate::cache::config::CacheError;
use crate::cache::db::{self, Batch, EntryRow, IndexDb};
use crate::cache::index::Entry;
use crate::cache::key::CacheKey;
use crate::cache::layout::Layout;

thread_local! {
    /// Set on the thread running the check. When the check's own hold on the disk is the
    /// last one, the disk closes on that thread: it must not wait for the check to end.
    static RUNNING_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is the one running the check.
pub(in crate::cache) fn running_here() -> bool {
    RUNNING_HERE.with(|r| r.get())
}

/// Clears [`RUNNING_HERE`] however the check ends.
struct RunningHere;

impl Drop for RunningHere {
    fn drop(&mut self) {
        RUNNING_HERE.with(|r| r.set(false));
    }
}

/// Checks the disk against the index, at every start, in the background: a file the
/// index does not know is adopted when it carries its row (the index was lost or set
/// aside) and is removed otherwise; a row whose file is gone is dropped; then the limits
/// are enforced. Adopted entries come last in LRU order and are checked against their
/// checksum on first use, like every entry after a restart. Holds the cache only one
/// shard at a time, so closing it is never held up.
pub(super) fn reconcile(disk: &Weak<Disk>) {
    RUNNING_HERE.with(|r| r.set(true));
    let _done = RunningHere;
    let started = std::time::Instant::now();
    let mut by_shard: Vec<Vec<CacheKey>> = vec![Vec::new(); 256];
    {
        let Some(disk) = disk.upgrade() else { return };
        for (k, _) in disk.index.lock().iter() {
            by_shard[k.0[0] as usize].push(*k);
        }
    }
    let (mut adopted, mut removed, mut dropped) = (Vec::new(), 0usize, 0usize);
    for shard in 0..=255u8 {
        let Some(disk) = disk.upgrade() else { return };
        if disk.closing.load(Ordering::SeqCst) {
            return;
        }
        let (a, r, d) = disk.reconcile_shard(shard, &by_shard[shard as usize]);
        adopted.extend(a);
        removed += r;
        dropped += d;
    }
    let Some(disk) = disk.upgrade() else { return };
    // Oldest use last.
    adopted.sort_by_key(|(_, used)| std::cmp::Reverse(*used));
    {
        let mut ix = disk.index.lock();
        for (k, _) in &adopted {
            ix.demote(k);
        }
    }
    // Written durably with the LRU positions below.
    disk.dirty.lock().extend(adopted.iter().map(|(k, _)| *k));
    disk.trim_to_limits();
    if let Err(e) = disk.flush_touches(true) {
        warn!(error = %e, "recording the cache check in the index");
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if !adopted.is_empty() || removed > 0 || dropped > 0 {
        info!(
            adopted = adopted.len(),
            removed,
            rows_dropped = dropped,
            elapsed_ms,
            "cache checked against the disk"
        );
    } else {
        debug!(
            elapsed_ms,
            "cache checked against the disk: index and files agree"
        );
    }
}

/// Opens the index; one that cannot be read (truncated, damaged) is set aside and a new
/// one started, which the background check then fills from the files on disk. An index
/// of a newer version is left alone: the cache cannot be used.
pub(super) fn open_index(layout: &Layout) -> Result<(IndexDb, db::Loaded), CacheError> {
    let path = layout.index_path()?;
    match IndexDb::open(&path) {
        Ok(opened) => Ok(opened),
        Err(e) if e.kind != db::DbErrorKind::Broken => Err(e.into()),
        Err(e) => {
            let aside = layout.set_index_aside()?;
            warn!(
                error = %e, moved_to = %aside.display(),
                "cache index unreadable: set aside; rebuilding it from the cached files"
            );
            Ok(IndexDb::open(&path)?)
        }
    }
}

impl Disk {
    /// One shard of [`reconcile`]: what it adopted (with when each was last used), how
    /// many files it removed and how many rows it dropped. `known` are the keys of this
    /// shard the index held when the check began.
    fn reconcile_shard(
        &self,
        shard: u8,
        known: &[CacheKey],
    ) -> (Vec<(CacheKey, u64)>, usize, usize) {
        let (mut adopted, mut removed, mut dropped) = (Vec::new(), 0usize, 0usize);
        {
            let names = self.layout.scan_shard(shard);
            let _w = self.write_lock.lock();
            let mut batch = Batch::default();
            let mut present = HashSet::new();
            for (key, name) in names {
                let Some(k) = key else {
                    self.layout.remove_in_shard(shard, &name);
                    removed += 1;
                    continue;
                };
                present.insert(k);
                if self.index.lock().contains(&k) || self.flights.lock().contains_key(&k) {
                    continue;
                }
                match self.adoptable(&k) {
                    Some((row, entry)) => {
                        let access = (entry.seq, entry.last_access_ms, 0);
                        adopted.push((k, entry.last_access_ms));
                        let mut ix = self.index.lock();
                        ix.insert(k, entry);
                        ix.demote(&k);
                        batch.upserts.push((k, row, access));
                    }
                    None => {
                        let _ = self.layout.remove_entry(&k);
                        removed += 1;
                    }
                }
            }
            {
                let mut ix = self.index.lock();
                for k in known {
                    if !present.contains(k) && ix.remove(k).is_some() {
                        batch.removes.push(*k);
                        dropped += 1;
                    }
                }
            }
            if let Err(e) = self.db.apply(&batch, false) {
                warn!(error = %e, "recording the cache check in the index");
            }
        }
        (adopted, removed, dropped)
    }

    /// The row and entry of a file the index does not know, from the row it carries, if
    /// that row is one of ours for this very file.
    fn adoptable(&self, k: &CacheKey) -> Option<(EntryRow, Entry)> {
        let (json, stamp) = self.layout.read_row(k)?;
        let row: EntryRow = serde_json::from_slice(&json).ok()?;
        if CacheKey::from_url(&row.url, &row.profile) != *k || row.size != stamp.size {
            return None;
        }
        let used_ms = (stamp.mtime_ns / 1_000_000).max(0) as u64;
        let entry = Entry {
            etag: row.etag.clone(),
            size: row.size,
            created_ms: row.created_ms,
            last_access_ms: used_ms,
            seq: 0,
            hits: 0,
            crc32: row.crc32,
            checked: 0,
        };
        Some((row, entry))
    }
}
