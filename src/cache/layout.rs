//! The cache directory on disk: `<dir>/<shard>/<key>`, a `tmp/` for downloads under way,
//! the index file and the lock that keeps a second process out.
//!
//! Trust: the directory is used only if it and everything at its top level belong to the
//! user running s3cachefs, are writable by nobody else and are not symbolic links (a
//! directory another user controls could point `.lock`, `tmp/` or a shard at files of
//! theirs choosing, and root would write there). After that check the directory is held
//! open, and every file operation goes through that descriptor (`openat2` with
//! `RESOLVE_NO_SYMLINKS`, `renameat`, `unlinkat`), so no path is resolved again. Files in
//! the shards are checked when opened (a regular file, ours) and by the background scan.

use std::ffi::OsString;
use std::fs::{DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, CWD, Dir, FileType, FlockOperation, Mode, OFlags, ResolveFlags, Stat, XattrFlags,
};

use super::key::CacheKey;

/// Name of the index file in the cache directory.
pub const INDEX_FILE: &str = "index.redb";
/// The lock file: held (flock) by the one process using the directory.
const LOCK_FILE: &str = ".lock";
/// Extended attribute on each cache file holding its index row (JSON), so that a lost
/// index can be rebuilt from the files themselves.
const ROW_XATTR: &str = "user.s3cachefs.row";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "cache directory {dir} is in use by another s3cachefs process{holder}; \
         stop it or choose another --cache-dir / CACHE_DIR"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error(
        "refusing cache directory {dir}: {why}. s3cachefs only uses a cache directory that \
         you own, that nobody else can write to and that holds no symbolic links; choose \
         another (--cache-dir / CACHE_DIR), or fix this one yourself after checking what \
         is in it"
    )]
    Untrusted { dir: PathBuf, why: String },
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The effective uid: what the kernel checks, and who must own the cache.
fn me() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The open cache directory. Holding it holds the lock.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    fd: OwnedFd,
    _lock: File,
}

/// Disk space of the filesystem holding the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes free for an unprivileged user.
    pub available: u64,
    /// Size of the filesystem.
    pub total: u64,
}

/// A file's identity and last change as `fstat` sees them: a file whose stamp differs
/// from the one recorded when it was checked has been touched since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Stamp {
    pub fn of(file: &File) -> io::Result<Stamp> {
        let st = rustix::fs::fstat(file)?;
        Ok(stamp(&st))
    }

    /// A compact form for the index (never 0, which there means "not checked").
    pub fn hash64(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.ino, self.size, self.mtime_ns, self.ctime_ns).hash(&mut h);
        h.finish().max(1)
    }
}

fn stamp(st: &Stat) -> Stamp {
    let ns = |s: i64, n: u64| s as i128 * 1_000_000_000 + n as i128;
    Stamp {
        ino: st.st_ino,
        size: st.st_size.max(0) as u64,
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
        ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
    }
}

/// Creates `dir` if needed and checks that it can be trusted, without taking the lock or
/// changing what is in it (beyond creating it): for the background mount's parent, which
/// opens its log file there before the mount itself starts.
pub fn check_dir(dir: &Path) -> Result<(), LayoutError> {
    let fd = open_trusted_dir(dir)?;
    check_entries(dir, &fd)
}

/// Opens (creating, 0600) a private file such as a log: never through a symbolic link,
/// and only if it is ours.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::openat(
        CWD,
        path,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if st.st_uid != me() || FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a regular file of yours", path.display()),
        ));
    }
    Ok(File::from(fd))
}

/// Creates `dir` (0700) if it is missing and opens it, refusing a symbolic link, a
/// non-directory, or a directory someone else owns or may write to. A directory of ours
/// that others may only read is made private.
fn open_trusted_dir(dir: &Path) -> Result<OwnedFd, LayoutError> {
    let untrusted = |why: String| LayoutError::Untrusted {
        dir: dir.to_path_buf(),
        why,
    };
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_err(parent))?;
    }
    match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(io_err(dir)(e.into())),
    }
    let fd = match rustix::fs::openat(
        CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            let to = std::fs::read_link(dir)
                .map(|t| format!(" (to {})", t.display()))
                .unwrap_or_default();
            return Err(untrusted(format!("it is a symbolic link{to}")));
        }
        Err(rustix::io::Errno::NOTDIR) => {
            return Err(untrusted("it is not a directory".into()));
        }
        Err(e) => return Err(io_err(dir)(e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err(dir)(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(untrusted("it is not a directory".into()));
    }
    if st.st_uid != me() {
        return Err(untrusted(format!(
            "it is owned by uid {}, not by you (uid {})",
            st.st_uid,
            me()
        )));
    }
    if st.st_mode & 0o077 != 0 {
        // Ours, so ours to make private (a fresh tmpfs is 1777): from here on nobody
        // else can add to it, and what someone may have put there before is checked
        // next, entry by entry.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(|e| io_err(dir)(e.into()))?;
    }
    Ok(fd)
}

/// Why an entry cannot be trusted, if it cannot: someone else's, writable by others, or
/// a symbolic link.
fn distrust(st: &Stat, want_dir: bool) -> Option<String> {
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind == FileType::Symlink {
        return Some("is a symbolic link".into());
    }
    if st.st_uid != me() {
        return Some(format!(
            "is owned by uid {}, not by you (uid {})",
            st.st_uid,
            me()
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Some(format!(
            "is writable by its group or by others (mode {:04o})",
            st.st_mode & 0o7777
        ));
    }
    if want_dir && kind != FileType::Directory {
        return Some("is not a directory".into());
    }
    None
}

/// Every entry at the top of the cache directory must be trustworthy too.
fn check_entries(dir: &Path, fd: &OwnedFd) -> Result<(), LayoutError> {
    for name in list_dir(fd).map_err(io_err(dir))? {
        let st = match rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(io_err(dir)(e.into())),
        };
        if let Some(why) = distrust(&st, false) {
            return Err(LayoutError::Untrusted {
                dir: dir.to_path_buf(),
                why: format!("{} {why}", dir.join(&name).display()),
            });
        }
    }
    Ok(())
}

/// Names in a directory, `.` and `..` left out.
fn list_dir(fd: &impl AsFd) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for item in Dir::read_from(fd)? {
        let item = item?;
        let name = item.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(out)
}

fn open_subdir(fd: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        fd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

impl Layout {
    /// Checks the directory (see the module comment), creates what is missing (0700 even
    /// under a permissive umask), takes the lock and removes what a crashed process left
    /// in `tmp/`.
    pub fn open(dir: &Path) -> Result<Layout, LayoutError> {
        let fd = open_trusted_dir(dir)?;
        check_entries(dir, &fd)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = rustix::fs::openat(
            &fd,
            LOCK_FILE,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_err(&lock_path)(e.into()))?;
        let mut lock = File::from(lock);
        // flock locks belong to the open file description, so this also refuses a second
        // open in the same process.
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
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
            Err(e) => return Err(io_err(&lock_path)(e.into())),
        }
        lock.set_len(0).map_err(io_err(&lock_path))?;
        let _ = writeln!(lock, "{}", std::process::id());

        let layout = Layout {
            dir: dir.to_path_buf(),
            fd,
            _lock: lock,
        };
        for shard in 0..=255u8 {
            layout.make_subdir(&hex::encode([shard]))?;
        }
        layout.make_subdir("tmp")?;
        let tmp = open_subdir(&layout.fd, "tmp").map_err(io_err(&dir.join("tmp")))?;
        for name in list_dir(&tmp).map_err(io_err(&dir.join("tmp")))? {
            let _ = rustix::fs::unlinkat(&tmp, &name, AtFlags::empty());
        }
        Ok(layout)
    }

    fn make_subdir(&self, name: &str) -> Result<(), LayoutError> {
        let path = self.dir.join(name);
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_err(&path)(e.into())),
        }
        // Existing ones passed `check_entries`; make them private as documented.
        let sub = open_subdir(&self.fd, name).map_err(io_err(&path))?;
        let st = rustix::fs::fstat(&sub).map_err(|e| io_err(&path)(e.into()))?;
        if st.st_mode & 0o777 != 0o700 {
            rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700))
                .map_err(|e| io_err(&path)(e.into()))?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path to `name` in the cache directory that resolves through the descriptor held
    /// open, not through the directory's path again: for libraries that take a path
    /// (redb). Linux only, as is FUSE here.
    fn via_fd(&self, name: &str) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// Where redb opens the index, after checking that whatever is there is a regular
    /// file of ours.
    pub fn index_path(&self) -> Result<PathBuf, LayoutError> {
        match rustix::fs::statat(&self.fd, INDEX_FILE, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                if let Some(why) = distrust(&st, false) {
                    return Err(LayoutError::Untrusted {
                        dir: self.dir.clone(),
                        why: format!("{INDEX_FILE} {why}"),
                    });
                }
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io_err(&self.dir.join(INDEX_FILE))(e.into())),
        }
        Ok(self.via_fd(INDEX_FILE))
    }

    /// Moves an index that cannot be read out of the way (kept for a post-mortem), so a
    /// new one can be built from the files.
    pub fn set_index_aside(&self) -> Result<PathBuf, LayoutError> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("{INDEX_FILE}.broken-{secs}");
        rustix::fs::renameat(&self.fd, INDEX_FILE, &self.fd, &name)
            .map_err(|e| io_err(&self.dir.join(INDEX_FILE))(e.into()))?;
        Ok(self.dir.join(name))
    }

    /// Path of an entry's file, for messages, tools and tests; the cache itself uses the
    /// descriptor-relative operations below.
    pub fn entry_path(&self, k: &CacheKey) -> PathBuf {
        self.dir.join(k.shard()).join(k.hex())
    }

    fn entry_name(k: &CacheKey) -> String {
        format!("{}/{}", k.shard(), k.hex())
    }

    /// Opens an entry's file for reading: never through a symbolic link, and only a
    /// regular file of ours.
    pub fn open_entry(&self, k: &CacheKey) -> io::Result<File> {
        let fd = open_beneath(&self.fd, &Self::entry_name(k), OFlags::RDONLY, 0)?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_uid != me() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "not a regular file of ours",
            ));
        }
        Ok(File::from(fd))
    }

    pub fn remove_entry(&self, k: &CacheKey) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(
            &self.fd,
            Self::entry_name(k),
            AtFlags::empty(),
        )?)
    }

    /// A fresh private file in `tmp/` for a download, by name; renamed into place with
    /// [`Layout::commit_temp`] only once complete and verified.
    pub fn create_temp(&self, k: &CacheKey) -> Result<(String, File), LayoutError> {
        let name = format!(
            "tmp/{}.{}.{:016x}.part",
            k.hex(),
            std::process::id(),
            rand::random::<u64>()
        );
        let fd = open_beneath(
            &self.fd,
            &name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
            0o600,
        )
        .map_err(io_err(&self.dir.join(&name)))?;
        Ok((name, File::from(fd)))
    }

    pub fn remove_temp(&self, name: &str) {
        let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
    }

    /// Puts a complete download in place as the entry of `k` (replacing any old file).
    pub fn commit_temp(&self, name: &str, k: &CacheKey) -> io::Result<()> {
        Ok(rustix::fs::renameat(
            &self.fd,
            name,
            &self.fd,
            Self::entry_name(k),
        )?)
    }

    /// Every name in one shard directory, as (key, or None when the name is not a cache
    /// key of this shard, name).
    pub fn scan_shard(&self, shard: u8) -> Vec<(Option<CacheKey>, OsString)> {
        let Ok(fd) = open_subdir(&self.fd, &hex::encode([shard])) else {
            return Vec::new();
        };
        let Ok(names) = list_dir(&fd) else {
            return Vec::new();
        };
        names
            .into_iter()
            .map(|name| {
                let key = name
                    .to_str()
                    .and_then(CacheKey::from_hex)
                    .filter(|k| k.0[0] == shard);
                (key, name)
            })
            .collect()
    }

    /// Removes a name found by [`Layout::scan_shard`] that is no entry of the index.
    pub fn remove_in_shard(&self, shard: u8, name: &OsString) {
        if let Ok(fd) = open_subdir(&self.fd, &hex::encode([shard]))
            && rustix::fs::unlinkat(&fd, name, AtFlags::empty()).is_err()
        {
            // A directory someone made there.
            let _ = rustix::fs::unlinkat(&fd, name, AtFlags::REMOVEDIR);
        }
    }

    /// The index row kept on an entry's file, if it has one: to adopt a file whose index
    /// row was lost. `stamp` is the file's, for its LRU place (oldest first).
    pub fn read_row(&self, k: &CacheKey) -> Option<(Vec<u8>, Stamp)> {
        let file = self.open_entry(k).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = rustix::fs::fgetxattr(&file, ROW_XATTR, &mut buf).ok()?;
        buf.truncate(n);
        Some((buf, Stamp::of(&file).ok()?))
    }

    /// Keeps the index row on the file itself (best effort: some filesystems have no
    /// user extended attributes; such files are removed, not adopted, after an index
    /// loss).
    pub fn write_row(&self, file: &File, row: &[u8]) {
        let _ = rustix::fs::fsetxattr(file, ROW_XATTR, row, XattrFlags::empty());
    }

    pub fn space(&self) -> io::Result<Space> {
        let st = rustix::fs::fstatvfs(&self.fd)?;
        Ok(Space {
            available: st.f_bavail.saturating_mul(st.f_frsize),
            total: st.f_blocks.saturating_mul(st.f_frsize),
        })
    }
}

/// `openat2` below `dir` with no symbolic link anywhere on the way; plain `openat` with
/// `O_NOFOLLOW` on kernels without `openat2` (before 5.6), where the directories on the
/// way were checked at open and only we can change them.
fn open_beneath(dir: &OwnedFd, name: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(mode);
    match rustix::fs::openat2(
        dir,
        name,
        flags,
        mode,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Err(rustix::io::Errno::NOSYS) => Ok(rustix::fs::openat(dir, name, flags, mode)?),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

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
        let tmp = root.join(tmp);
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

    #[test]
    fn symlinks_and_open_modes_are_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep me").expect("victim");
        // A planted symlink among the entries.
        let root = dir.path().join("c");
        fs::create_dir(&root).expect("mkdir");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).expect("chmod");
        std::os::unix::fs::symlink(&victim, root.join(".lock")).expect("symlink");
        let e = Layout::open(&root).expect_err("refused");
        assert!(e.to_string().contains(".lock is a symbolic link"), "{e}");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep me");
        // An entry others may write to.
        let open = dir.path().join("open");
        fs::create_dir_all(open.join("tmp")).expect("mkdir");
        fs::set_permissions(open.join("tmp"), fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = Layout::open(&open).expect_err("refused");
        assert!(e.to_string().contains("mode 0777"), "{e}");
        // A directory someone else owns (only root can make one to test with).
        if me() == 0 {
            let theirs = dir.path().join("theirs");
            fs::create_dir(&theirs).expect("mkdir");
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
            let e = Layout::open(&theirs).expect_err("refused");
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
            assert!(
                fs::read_dir(&theirs).expect("ls").next().is_none(),
                "untouched"
            );
        }
        // The cache directory itself a symlink.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&root, &link).expect("symlink");
        let e = Layout::open(&link).expect_err("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A file in its place.
        let e = Layout::open(&victim).expect_err("refused");
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep me");
    }

    #[test]
    fn an_open_directory_of_ours_is_made_private() {
        for mode in [0o755, 0o1777] {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().join("c");
            fs::create_dir(&root).expect("mkdir");
            fs::set_permissions(&root, fs::Permissions::from_mode(mode)).expect("chmod");
            let _l = Layout::open(&root).expect("open");
            let m = fs::metadata(&root).expect("meta").permissions().mode() & 0o7777;
            assert_eq!(m, 0o700);
        }
    }
}
