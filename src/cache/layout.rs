//! The cache directory on disk: `<dir>/<shard>/<key>`, a `tmp/` for downloads under way,
//! the index file and the lock that keeps a second process out.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::key::CacheKey;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "cache directory {dir} is in use by another s3cachefs process{holder}; \
         stop it or choose another --cache-dir / CACHE_DIR"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The open cache directory. Holding it holds the lock.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    _lock: File,
}

impl Layout {
    /// Creates the directory tree (0700 even under a permissive umask), takes the lock and
    /// removes what a crashed process left in `tmp/`.
    pub fn open(dir: &Path) -> Result<Layout, LayoutError> {
        make_private_dir(dir)?;
        let lock_path = dir.join(".lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // flock locks belong to the open file description, so this also refuses a second
        // open in the same process.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(&lock_path)(err));
            }
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(LayoutError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        lock.set_len(0).map_err(io_err(&lock_path))?;
        let _ = writeln!(lock, "{}", std::process::id());

        for shard in 0..=255u8 {
            make_private_dir(&dir.join(hex::encode([shard])))?;
        }
        let tmp = dir.join("tmp");
        make_private_dir(&tmp)?;
        for item in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let item = item.map_err(io_err(&tmp))?;
            let _ = fs::remove_file(item.path());
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn index_path(&self) -> PathBuf {
        self.dir.join("index.redb")
    }

    pub fn entry_path(&self, k: &CacheKey) -> PathBuf {
        self.dir.join(k.shard()).join(k.hex())
    }

    /// A fresh private file in `tmp/` for a download; renamed to [`Layout::entry_path`]
    /// only once complete and verified.
    pub fn create_temp(&self, k: &CacheKey) -> Result<(PathBuf, File), LayoutError> {
        let name = format!(
            "{}.{}.{:016x}.part",
            k.hex(),
            std::process::id(),
            rand::random::<u64>()
        );
        let path = self.dir.join("tmp").join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((path, file))
    }

    /// Every file under the shard directories, as (key or None when the name is not a
    /// cache key, path). Only used by recovery after an unclean shutdown.
    pub fn scan_shard(&self, shard: u8) -> Vec<(Option<CacheKey>, PathBuf)> {
        let dir = self.dir.join(hex::encode([shard]));
        let Ok(items) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        items
            .flatten()
            .map(|item| {
                let name = item.file_name();
                let key = name
                    .to_str()
                    .and_then(CacheKey::from_hex)
                    .filter(|k| k.0[0] == shard);
                (key, item.path())
            })
            .collect()
    }
}

fn make_private_dir(path: &Path) -> Result<(), LayoutError> {
    match DirBuilder::new().recursive(true).mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    // mkdir honours the umask and an existing directory keeps its mode: set it outright.
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_dir() {
        return Err(io_err(path)(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        )));
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_tree_and_refuses_second_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("c");
        let layout = Layout::open(&root).expect("open");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("00")), 0o700);
        assert_eq!(mode(&root.join("ff")), 0o700);
        let k = CacheKey::new("b", "k", "default");
        let (tmp, _f) = layout.create_temp(&k).expect("temp");
        assert_eq!(mode(&tmp), 0o600);
        match Layout::open(&root) {
            Err(LayoutError::Locked { holder, .. }) => {
                assert!(holder.contains(&std::process::id().to_string()))
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(layout);
        // Reopening clears tmp/.
        let _layout = Layout::open(&root).expect("reopen");
        assert!(!tmp.exists());
    }
}
