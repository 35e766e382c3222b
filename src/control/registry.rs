//! Which control socket serves which mountpoint. From a mountpoint alone the cache
//! directory (and so the socket) cannot be seen, so each mount with a cache leaves a
//! symlink `<runtime dir>/mounts/<id>` → `<cache dir>/control.sock`, where `<id>` is a
//! hash of the canonical mountpoint, and removes it when it ends. A link left by a crash
//! leads to a socket nobody listens on (or that answers for another mountpoint), which
//! callers detect by asking the mount where it is.
//!
//! The runtime directory is per user, as the sockets are: `/run/s3cachefs` for root (the
//! same for a systemd service and a root shell), else `$XDG_RUNTIME_DIR/s3cachefs`, else
//! `/run/user/<uid>/s3cachefs`, else `<tmp>/s3cachefs-<uid>`.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// This user's runtime directory for s3cachefs (see the module docs).
pub fn runtime_dir() -> PathBuf {
    let uid = euid();
    if uid == 0 {
        return PathBuf::from("/run/s3cachefs");
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
    {
        return x.join("s3cachefs");
    }
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if std::fs::metadata(&run_user).is_ok_and(|m| m.is_dir() && m.uid() == uid) {
        return run_user.join("s3cachefs");
    }
    std::env::temp_dir().join(format!("s3cachefs-{uid}"))
}

fn entry_name(mountpoint: &Path) -> String {
    let digest = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..16])
}

/// Where the link for `mountpoint` (canonical) lives.
pub fn entry_path(mountpoint: &Path) -> PathBuf {
    runtime_dir().join("mounts").join(entry_name(mountpoint))
}

/// The socket registered for `mountpoint` (canonical), if any.
pub fn lookup(mountpoint: &Path) -> Option<PathBuf> {
    let dir = runtime_dir().join("mounts");
    // A directory someone else owns (a shared /tmp) could point us anywhere.
    if !std::fs::metadata(&dir).is_ok_and(|m| m.uid() == euid()) {
        return None;
    }
    std::fs::read_link(dir.join(entry_name(mountpoint))).ok()
}

/// A live registration; dropping it removes the link if it is still ours.
#[derive(Debug)]
pub struct Registration {
    link: PathBuf,
    socket: PathBuf,
}

impl Registration {
    pub fn register(mountpoint: &Path, socket: &Path) -> io::Result<Registration> {
        let dir = runtime_dir().join("mounts");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let meta = std::fs::metadata(&dir)?;
        if meta.uid() != euid() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} belongs to another user", dir.display()),
            ));
        }
        let link = dir.join(entry_name(mountpoint));
        // Left by a mount of the same mountpoint that died: it no longer serves anything.
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(socket, &link)?;
        Ok(Registration {
            link,
            socket: socket.to_path_buf(),
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A newer mount on the same mountpoint may have replaced the link.
        if std::fs::read_link(&self.link).is_ok_and(|t| t == self.socket) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinct() {
        let a = entry_name(Path::new("/mnt/a"));
        assert_eq!(a, entry_name(Path::new("/mnt/a")));
        assert_ne!(a, entry_name(Path::new("/mnt/b")));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn register_lookup_and_drop() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mp = tmp.path().join("mnt");
        let sock = tmp.path().join("control.sock");
        let r = Registration::register(&mp, &sock).expect("register");
        assert_eq!(lookup(&mp), Some(sock.clone()));
        drop(r);
        assert_eq!(lookup(&mp), None);
    }
}
