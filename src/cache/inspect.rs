//! Looking into a cache directory that no mount has open (`s3cachefs stats --cache-dir`):
//! how many entries and bytes its index holds. Takes the cache lock like a mount does, so
//! it never reads an index a live process is changing; a locked directory is reported as
//! in use, and the caller asks the mount instead.

use std::path::{Path, PathBuf};

use super::db::{DbError, IndexDb};
use super::layout::{Layout, LayoutError};

/// What the index on disk says. Counters such as hits and misses live only in a running
/// mount's memory, so they are not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSummary {
    pub dir: PathBuf,
    pub entry_count: u64,
    /// Bytes of all entries.
    pub total_size: u64,
    /// False when the last process that had the cache open did not close it (crash,
    /// kill -9): the next mount checks files against the index before trusting them.
    pub clean: bool,
    /// Most recent use of any entry, in milliseconds since the Unix epoch.
    pub last_access_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0} does not exist (nothing has been cached there yet)")]
    Missing(PathBuf),
    #[error("{0} is not an s3cachefs cache directory (it has no index.redb)")]
    NotACache(PathBuf),
    #[error("cache directory {dir} is in use by a running s3cachefs mount{holder}")]
    InUse { dir: PathBuf, holder: String },
    #[error(transparent)]
    Layout(LayoutError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Reads the index of the cache at `dir` without changing what a later mount sees.
pub fn inspect(dir: &Path) -> Result<DirSummary, InspectError> {
    if !dir.is_dir() {
        return Err(InspectError::Missing(dir.to_path_buf()));
    }
    // Checked before taking the lock: opening the layout creates the shard directories,
    // which must not happen in a directory that was never a cache (a mistyped path).
    let index = dir.join(super::layout::INDEX_FILE);
    if !index.is_file() {
        return Err(InspectError::NotACache(dir.to_path_buf()));
    }
    let layout = Layout::open(dir).map_err(|e| match e {
        LayoutError::Locked { dir, holder } => InspectError::InUse { dir, holder },
        other => InspectError::Layout(other),
    })?;
    let (db, loaded) = IndexDb::open(&layout.index_path().map_err(InspectError::Layout)?)?;
    // Opening marks the index as in use (unclean). Put back what it was, so an index left
    // unclean by a crash still gets its recovery pass at the next mount.
    db.set_meta("clean", u64::from(loaded.was_clean))?;
    let summary = DirSummary {
        dir: layout.dir().to_path_buf(),
        entry_count: loaded.entries.len() as u64,
        total_size: loaded.entries.iter().map(|(_, e)| e.size).sum(),
        clean: loaded.was_clean,
        last_access_ms: loaded.entries.iter().map(|(_, e)| e.last_access_ms).max(),
    };
    drop(db);
    drop(layout);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::db::{Batch, EntryRow};
    use crate::cache::key::CacheKey;

    fn row(size: u64) -> EntryRow {
        EntryRow {
            url: format!("s3://b/{size}"),
            profile: "default".into(),
            etag: "\"e\"".into(),
            size,
            created_ms: 5,
            crc32: 0,
            blocks: Vec::new(),
        }
    }

    #[test]
    fn counts_entries_and_keeps_the_clean_flag() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("c");
        {
            let layout = Layout::open(&dir).expect("layout");
            let (db, _) = IndexDb::open(&layout.index_path().expect("path")).expect("db");
            let mut b = Batch::default();
            b.upserts
                .push((CacheKey::new("b", "1", "default"), row(10), (1, 7, 0)));
            b.upserts
                .push((CacheKey::new("b", "2", "default"), row(32), (2, 9, 0)));
            db.apply(&b, true).expect("apply");
            // Not closed: as after a crash.
        }
        let s = inspect(&dir).expect("inspect");
        assert_eq!((s.entry_count, s.total_size), (2, 42));
        assert!(!s.clean);
        assert_eq!(s.last_access_ms, Some(9));
        // Still unclean for the next mount, and inspecting twice gives the same answer.
        assert_eq!(inspect(&dir).expect("again"), s);
    }

    #[test]
    fn refuses_locked_missing_and_foreign_directories() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("c");
        assert!(matches!(inspect(&dir), Err(InspectError::Missing(_))));
        std::fs::create_dir(&dir).expect("mkdir");
        assert!(matches!(inspect(&dir), Err(InspectError::NotACache(_))));
        // Nothing was created in a directory that is not a cache.
        assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 0);
        let layout = Layout::open(&dir).expect("layout");
        drop(IndexDb::open(&layout.index_path().expect("path")).expect("db"));
        assert!(matches!(inspect(&dir), Err(InspectError::InUse { .. })));
    }
}
