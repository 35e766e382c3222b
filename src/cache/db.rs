//! The persistent index: redb, an embedded ACID store in pure Rust (no C toolchain, one
//! file, crash-safe copy-on-write commits). Entry rows rarely change; the LRU position of
//! each entry lives in a small fixed-size table so a hit rewrites 24 bytes, not the row.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::index::Entry;
use super::key::CacheKey;

/// key -> [`EntryRow`] as JSON.
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// key -> (seq, last_access_ms, hits).
const ACCESS: TableDefinition<&[u8], (u64, u64, u64)> = TableDefinition::new("access");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const SCHEMA_VERSION: u64 = 1;
/// Marks the error of an index written by a newer version.
const NEWER: &str = "is from a newer s3cachefs";

#[derive(Debug, thiserror::Error)]
#[error("cache index {path}: {msg}")]
pub struct DbError {
    pub path: PathBuf,
    pub msg: String,
    pub kind: DbErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// Written by a newer s3cachefs: left alone rather than rebuilt.
    Newer,
    /// The file is not a readable index (truncated, damaged): it can be rebuilt.
    Broken,
    /// Anything else (I/O, the file in use): neither rebuilt nor left as is.
    Other,
}

/// The parts of an entry that change only when the object is fetched again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryRow {
    pub url: String,
    pub profile: String,
    pub etag: String,
    pub size: u64,
    pub created_ms: u64,
    /// CRC32 of the whole file.
    pub crc32: u32,
    /// CRC32 of each [`BLOCK_SIZE`] block, so reads through s3cachefs check what they
    /// serve. Empty in rows of older versions and in rows adopted from a file: filled in
    /// by the first whole-file check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<u32>,
}

/// Size of the blocks whose checksums [`EntryRow::blocks`] holds.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// One atomic change to the index.
#[derive(Debug, Default)]
pub struct Batch {
    pub upserts: Vec<(CacheKey, EntryRow, (u64, u64, u64))>,
    pub removes: Vec<CacheKey>,
    pub touches: Vec<(CacheKey, (u64, u64, u64))>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty() && self.touches.is_empty()
    }
}

/// Everything read at open.
pub struct Loaded {
    pub entries: Vec<(CacheKey, Entry)>,
    /// False when the last process did not close the index (crash, kill -9).
    pub was_clean: bool,
}

#[derive(Debug)]
pub struct IndexDb {
    db: Database,
    path: PathBuf,
}

impl IndexDb {
    pub fn open(path: &Path) -> Result<(IndexDb, Loaded), DbError> {
        let err = |kind: DbErrorKind, msg: String| DbError {
            path: path.to_path_buf(),
            kind,
            msg,
        };
        let db = Database::create(path).map_err(|e| {
            use redb::{DatabaseError as D, StorageError as S};
            let kind = match &e {
                D::Storage(S::Corrupted(_)) | D::RepairAborted => DbErrorKind::Broken,
                D::Storage(S::Io(io))
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    DbErrorKind::Broken
                }
                D::UpgradeRequired(_) => DbErrorKind::Newer,
                _ => DbErrorKind::Other,
            };
            err(kind, e.to_string())
        })?;
        // Private like every other file of the cache, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err(DbErrorKind::Other, e.to_string()))?;
        let me = IndexDb {
            db,
            path: path.to_path_buf(),
        };
        // Tables that cannot be read are a damaged file, but for a newer schema.
        let loaded = me.load().map_err(|m| {
            let kind = if m.contains(NEWER) {
                DbErrorKind::Newer
            } else {
                DbErrorKind::Broken
            };
            err(kind, m)
        })?;
        // From here until close(), a crash leaves the index marked unclean.
        me.set_meta("clean", 0)?;
        Ok((me, loaded))
    }

    fn load(&self) -> Result<Loaded, String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        let was_clean;
        let mut entries = Vec::new();
        {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            let version = meta
                .get("schema_version")
                .map_err(|e| e.to_string())?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(|e| e.to_string())?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => {
                    return Err(format!(
                        "index schema version {v} {NEWER} (this build knows {SCHEMA_VERSION}); \
                         use that version of s3cachefs, or another cache directory"
                    ));
                }
            }
            // A brand-new index is clean by definition.
            was_clean = meta
                .get("clean")
                .map_err(|e| e.to_string())?
                .is_none_or(|v| v.value() == 1);
            let rows = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
            let access = txn.open_table(ACCESS).map_err(|e| e.to_string())?;
            entries.reserve(rows.len().unwrap_or(0) as usize);
            for item in rows.iter().map_err(|e| e.to_string())? {
                let (k, v) = item.map_err(|e| e.to_string())?;
                let Ok(key) = <[u8; 32]>::try_from(k.value()) else {
                    continue;
                };
                // A row we cannot read is dropped: the entry becomes a miss, never wrong data.
                let Ok(row) = serde_json::from_slice::<EntryRow>(v.value()) else {
                    continue;
                };
                let (seq, last_access_ms, hits) = access
                    .get(k.value())
                    .map_err(|e| e.to_string())?
                    .map(|a| a.value())
                    .unwrap_or((0, row.created_ms, 0));
                entries.push((
                    CacheKey(key),
                    Entry {
                        etag: row.etag,
                        size: row.size,
                        created_ms: row.created_ms,
                        last_access_ms,
                        seq,
                        hits,
                        crc32: row.crc32,
                        checked: 0,
                    },
                ));
            }
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(Loaded { entries, was_clean })
    }

    fn err(&self, e: impl std::fmt::Display) -> DbError {
        DbError {
            path: self.path.clone(),
            msg: e.to_string(),
            kind: DbErrorKind::Other,
        }
    }

    /// Applies `batch` atomically. `durable = false` skips the fsync: used for LRU
    /// positions, which become durable with the next durable commit and are worth no
    /// disk flush of their own.
    pub fn apply(&self, batch: &Batch, durable: bool) -> Result<(), DbError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        if !durable {
            txn.set_durability(Durability::None);
        }
        {
            let mut rows = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
            let mut access = txn.open_table(ACCESS).map_err(|e| self.err(e))?;
            for k in &batch.removes {
                rows.remove(k.0.as_slice()).map_err(|e| self.err(e))?;
                access.remove(k.0.as_slice()).map_err(|e| self.err(e))?;
            }
            for (k, row, acc) in &batch.upserts {
                let json = serde_json::to_vec(row).map_err(|e| self.err(e))?;
                rows.insert(k.0.as_slice(), json.as_slice())
                    .map_err(|e| self.err(e))?;
                access
                    .insert(k.0.as_slice(), *acc)
                    .map_err(|e| self.err(e))?;
            }
            for (k, acc) in &batch.touches {
                // An entry removed meanwhile stays removed.
                if rows.get(k.0.as_slice()).map_err(|e| self.err(e))?.is_some() {
                    access
                        .insert(k.0.as_slice(), *acc)
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    pub fn set_meta(&self, name: &str, value: u64) -> Result<(), DbError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(name, value).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The stored row of one entry (url, profile, ...), for tools and tests.
    pub fn row(&self, k: &CacheKey) -> Result<Option<EntryRow>, DbError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let rows = txn.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let Some(v) = rows.get(k.0.as_slice()).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_order_survive_reopen_and_clean_flag_tracks_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.redb");
        let k1 = CacheKey::new("b", "1", "default");
        let k2 = CacheKey::new("b", "2", "default");
        let row = |n: &str| EntryRow {
            url: format!("s3://b/{n}"),
            profile: "default".into(),
            etag: "\"x\"".into(),
            size: 3,
            created_ms: 7,
            crc32: 9,
            blocks: vec![9],
        };
        {
            let (db, loaded) = IndexDb::open(&path).expect("open");
            assert!(loaded.was_clean && loaded.entries.is_empty());
            let mut b = Batch::default();
            b.upserts.push((k1, row("1"), (1, 7, 0)));
            b.upserts.push((k2, row("2"), (2, 7, 0)));
            db.apply(&b, true).expect("apply");
            let t = Batch {
                touches: vec![(k1, (3, 8, 1))],
                ..Batch::default()
            };
            db.apply(&t, false).expect("touch");
            db.set_meta("clean", 1).expect("close");
        }
        let (db, loaded) = IndexDb::open(&path).expect("reopen");
        assert!(loaded.was_clean);
        let mut got = loaded.entries;
        got.sort_by_key(|(_, e)| e.seq);
        assert_eq!(
            got.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![k2, k1]
        );
        assert_eq!(got[1].1.hits, 1);
        assert_eq!(db.row(&k1).expect("row"), Some(row("1")));
        drop(db);
        // Not closed: the next open sees an unclean index.
        let (_db, loaded) = IndexDb::open(&path).expect("reopen");
        assert!(!loaded.was_clean);
    }
}
