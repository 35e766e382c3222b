//! `s3cachefs unmount`: unmounts, then waits for the process that served the mount to
//! close its cache, so a script may remount on the same cache directory (or read it with
//! `stats`) at once. Like `umount`, it does not wait when that process cannot be found
//! (another user's mount, or the cache off).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{AdminError, locate};

/// Longest the command waits for the mount's process after the unmount itself.
const EXIT_WAIT: Duration = Duration::from_secs(10);

pub async fn run(mountpoint: &Path) -> Result<(), AdminError> {
    let pid = match locate::mount_root(mountpoint) {
        Ok(root) => locate::connect_mount(&root).await.ok().map(|(_, s)| s.pid),
        Err(_) => None,
    };
    // The caller names the mountpoint in the message already.
    crate::fuse::unmount_path(mountpoint).map_err(|e| AdminError::Other(e.to_string()))?;
    if let Some(pid) = pid {
        let deadline = Instant::now() + EXIT_WAIT;
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
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
