//! `s3cachefs unmount`: unmounts, then waits for the process that served the mount to
//! close its cache, so a script may remount on the same cache directory (or read it with
//! `stats`) at once. Like `umount`, it does not wait when that process cannot be found
//! (another user's mount, or the cache off).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{AdminError, locate};

/// Longest the command waits for the mount's process after the unmount itself.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// Longest the command looks for that process before unmounting without it.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// Unmounts; `Some(pid)` when the process that served the mount is still running after
/// [`EXIT_WAIT`].
pub async fn run(mountpoint: &Path) -> Result<Option<u32>, AdminError> {
    let pid = serving_pid(mountpoint);
    // The caller names the mountpoint in the message already.
    crate::fuse::unmount_path(mountpoint).map_err(|e| AdminError::Other(e.to_string()))?;
    if let Some(pid) = pid {
        let deadline = Instant::now() + EXIT_WAIT;
        while alive(pid) {
            if Instant::now() >= deadline {
                return Ok(Some(pid));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(None)
}

/// The pid of the process serving `mountpoint`, asked over its control socket (which
/// lives in the cache directory). Nothing here enters the mount: a mount whose process is
/// stuck is when people unmount, and a call hanging inside it would keep it busy. The
/// socket may not answer either, so the question gets [`LOOKUP_WAIT`].
fn serving_pid(mountpoint: &Path) -> Option<u32> {
    let root = outside_path(mountpoint)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let pid = rt.ok().and_then(|rt| {
            rt.block_on(async {
                let connected = tokio::time::timeout(LOOKUP_WAIT, locate::connect_mount(&root));
                connected.await.ok()?.ok().map(|(_, s)| s.pid)
            })
        });
        let _ = tx.send(pid);
    });
    rx.recv_timeout(LOOKUP_WAIT).ok().flatten()
}

/// The canonical path of `mountpoint` from its parent's, without looking inside it.
fn outside_path(mountpoint: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(mountpoint).ok()?;
    let name = abs.file_name()?;
    let parent = std::fs::canonicalize(abs.parent()?).ok()?;
    Some(parent.join(name))
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
