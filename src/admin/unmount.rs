//! `s3cachefs unmount`: unmounts, then waits for the process that served the mount to
//! close its cache, so a script may remount on the same cache directory (or read it with
//! `stats`) at once. Like `umount`, it does not wait when that process cannot be found
//! (another user's mount, or the cache off).
//!
//! Nothing here enters the mount: a mount whose process is stuck is when people unmount,
//! and a call hanging inside it would keep it busy. Whether the path is mounted comes from
//! /proc/self/mountinfo, and who keeps a busy mount busy from /proc/*/fd, cwd and maps.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{AdminError, locate};

/// Longest the command waits for the mount's process after the unmount itself.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// Longest the command looks for that process before unmounting without it.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// A process with a file, directory or mapping under a mountpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name, as `ps` shows it.
    pub comm: String,
}

/// Unmounts; `Some(pid)` when the process that served the mount is still running after
/// [`EXIT_WAIT`]. Every error names `mountpoint`.
pub async fn run(mountpoint: &Path) -> Result<Option<u32>, AdminError> {
    let not_mounted = || AdminError::NotMounted(mountpoint.to_path_buf());
    let target = outside_path(mountpoint).ok_or_else(not_mounted)?;
    if !mount_points().contains(&target) {
        return Err(not_mounted());
    }
    let pid = serving_pid(&target);
    unmount_path(mountpoint, &target)?;
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

/// Unmounts with fusermount3 (all a mount's own user may use), else umount2 (root).
/// fusermount3's complaint is kept rather than printed: ours says more, and is the only
/// one the user sees.
fn unmount_path(shown: &Path, target: &Path) -> Result<(), AdminError> {
    let fusermount = Command::new("fusermount3")
        .arg("-u")
        .arg(target)
        // Its messages in English, to tell "busy" from the rest.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let said = match &fusermount {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("running fusermount3: {e}"),
    };
    let c = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| AdminError::Other(format!("{}: path contains NUL", shown.display())))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    // A user who may not call umount2 gets EPERM: then fusermount3 said why it failed.
    if err.raw_os_error() == Some(libc::EBUSY) || said.contains("Device or resource busy") {
        return Err(AdminError::Busy {
            path: shown.to_path_buf(),
            holders: holders(target),
        });
    }
    if err.raw_os_error() == Some(libc::EINVAL) {
        // Unmounted by someone else since we looked.
        return Err(AdminError::NotMounted(shown.to_path_buf()));
    }
    let why = if err.raw_os_error() == Some(libc::EPERM) && !said.is_empty() {
        said
    } else {
        err.to_string()
    };
    Err(AdminError::Other(format!(
        "unmounting {}: {why}",
        shown.display()
    )))
}

/// The mount points of this mount namespace.
fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.split(|&b| b == b'\n')
        // ID, parent ID, major:minor, root, then the mount point.
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|p| PathBuf::from(OsStr::from_bytes(&unescape_octal(p))))
        .collect()
}

/// mountinfo writes a space, tab, newline and backslash in a path as `\040` and so on.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits = field.get(i + 1..i + 4);
        match digits {
            Some(d) if field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                let n = d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
                out.push(n as u8);
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Processes with their working or root directory, their program, an open file or a
/// mapped file under `mountpoint`, as `fuser -m` finds them. Those of other users are
/// missed unless we are root (their /proc entries are not ours to read).
pub fn holders(mountpoint: &Path) -> Vec<Holder> {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Holder> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && holds(pid, mountpoint))
        .map(|pid| Holder {
            pid,
            comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_else(|_| "?".into()),
        })
        .collect();
    found.sort_by_key(|h| h.pid);
    found
}

/// The rest of the message for a busy mount: who holds it, and what to do.
pub fn busy_with(path: &Path, holders: &[Holder]) -> String {
    let lazily = format!(
        "close them, or detach it now and let it go once they are done: umount -l {}",
        path.display()
    );
    if holders.is_empty() {
        return format!(
            "something still uses it (a process of another user, or a mount inside it); {lazily}"
        );
    }
    let who: Vec<String> = holders
        .iter()
        .map(|h| format!("{} ({})", h.pid, h.comm))
        .collect();
    let process = if holders.len() == 1 {
        "process"
    } else {
        "processes"
    };
    format!(
        "files or directories in it are in use by {process} {}; {lazily}",
        who.join(", ")
    )
}

fn holds(pid: u32, mountpoint: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let under = |p: &Path| p.starts_with(mountpoint);
    let link_under = |p: PathBuf| std::fs::read_link(p).is_ok_and(|t| under(&t));
    if ["cwd", "root", "exe"]
        .iter()
        .any(|l| link_under(proc.join(l)))
    {
        return true;
    }
    if let Ok(fds) = std::fs::read_dir(proc.join("fd"))
        && fds.flatten().any(|fd| link_under(fd.path()))
    {
        return true;
    }
    // A file mapped with mmap keeps the mount busy after its descriptor is closed. The
    // path is the last column and may hold spaces.
    std::fs::read_to_string(proc.join("maps")).is_ok_and(|maps| {
        maps.lines().any(|l| {
            l.find(" /")
                .is_some_and(|at| under(Path::new(l[at + 1..].trim_end())))
        })
    })
}

/// The pid of the process serving the mount at `root`, asked over its control socket
/// (which lives in the cache directory). The socket may not answer either, so the
/// question gets [`LOOKUP_WAIT`].
fn serving_pid(root: &Path) -> Option<u32> {
    let root = root.to_path_buf();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_octal(br"/mnt/a\040b\134c"), b"/mnt/a b\\c");
        assert_eq!(unescape_octal(br"/plain"), b"/plain");
        assert_eq!(unescape_octal(br"/odd\04"), br"/odd\04");
    }

    #[test]
    fn this_process_is_found_by_its_open_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("held");
        std::fs::write(&path, b"x").expect("write");
        let _open = std::fs::File::open(&path).expect("open");
        // Holders never include the asking process: ask from a child.
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .expect("sleep");
        let found = holders(dir.path());
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found
                .iter()
                .any(|h| h.pid == child.id() && h.comm == "sleep"),
            "{found:?}"
        );
        assert!(found.iter().all(|h| h.pid != std::process::id()));
    }
}
