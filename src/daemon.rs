//! Running a mount in the background: the parent starts itself again in the foreground,
//! detached (its own session, output to the log file), and waits on a pipe until the
//! child says the mount is live or why it failed, so `s3cachefs mount` returns only once
//! the mountpoint works, with the child's error as its own.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use crate::cache::LayoutError;
use crate::config::Config;

/// Set in the background child: the fd to report readiness on.
const READY_FD_ENV: &str = "S3CACHEFS_READY_FD";
const READY_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    CacheDir(#[from] LayoutError),
    /// The child's own message: why its mount failed.
    #[error("{0}")]
    Child(String),
    #[error(
        "the background mount at {mountpoint} exited ({status}) before it was ready; see {log}"
    )]
    Exited {
        mountpoint: String,
        status: String,
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// The background child's end of the pipe: tells the waiting parent once how the mount
/// went. In a foreground mount there is nobody waiting, and it does nothing.
pub struct Readiness(Option<std::fs::File>);

impl Readiness {
    pub fn from_env() -> Readiness {
        // SAFETY: the parent set READY_FD_ENV only after putting the pipe's write end on
        // READY_FD for this process; nothing else owns that fd.
        Readiness(
            std::env::var(READY_FD_ENV)
                .ok()
                .map(|_| unsafe { std::fs::File::from_raw_fd(READY_FD) }),
        )
    }

    /// `Ok` carries the warnings the user should see, one per line after `READY`.
    pub fn report<E: std::fmt::Display>(&mut self, r: &Result<Vec<String>, E>) {
        if let Some(mut p) = self.0.take() {
            let msg = match r {
                Ok(warnings) => {
                    let mut m = "READY\n".to_string();
                    for w in warnings {
                        m.push_str(&format!("WARN {}\n", w.replace('\n', " ")));
                    }
                    m
                }
                Err(e) => format!("ERROR {e}\n"),
            };
            let _ = p.write_all(msg.as_bytes());
        }
    }
}

/// Runs the mount in a detached child and waits until it is live (or has failed).
pub fn spawn_background(cfg: &Config, args: &[OsString]) -> Result<(), DaemonError> {
    let log = match &cfg.mount.log_file {
        Some(l) => {
            if let Some(dir) = l.parent() {
                std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            }
            l.clone()
        }
        None => {
            // The log goes in the cache directory: only once it is known to be ours.
            crate::cache::check_dir(&cfg.cache.dir)?;
            default_log(cfg)
        }
    };
    let log_file = crate::cache::open_private_append(&log)
        .map_err(io(format!("opening log file {}", log.display())))?;
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io("creating a pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just returned these fds; each is owned once.
    let mut read_end = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    // The child logs it too, but only to its log file: looked at before the mount covers
    // the directory, said here once the mount is up.
    let hidden = crate::mount::hidden_by_mount(&cfg.mount.mountpoint);
    let write_end = fds[1];
    let exe = std::env::current_exe().map_err(io("finding the s3cachefs binary"))?;
    let mut args = args.to_vec();
    args.push("--foreground".into());
    let mut child = Process::new(exe);
    child
        .args(args)
        .env(READY_FD_ENV, READY_FD.to_string())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(io("opening the log file"))?)
        .stderr(log_file);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        child.pre_exec(move || {
            if libc::dup2(write_end, READY_FD) < 0 || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = child.spawn().map_err(io("starting the background mount"));
    // SAFETY: the parent's copy of the write end is ours to close.
    unsafe { libc::close(write_end) };
    let mut child = spawned?;
    let mut said = String::new();
    let _ = read_end.read_to_string(&mut said);
    let mp = cfg.mount.mountpoint.display();
    if said.starts_with("READY") {
        println!("s3cachefs: mounted at {mp} (logs: {})", log.display());
        if let Some(hidden) = hidden {
            eprintln!("s3cachefs: warning: {hidden}");
        }
        for w in said.lines().filter_map(|l| l.strip_prefix("WARN ")) {
            eprintln!("s3cachefs: warning: {w}");
        }
        return Ok(());
    }
    if let Some(msg) = said.strip_prefix("ERROR ") {
        let _ = child.wait();
        return Err(DaemonError::Child(msg.trim_end().to_string()));
    }
    let status = child
        .wait()
        .map_err(io("waiting for the background mount"))?;
    Err(DaemonError::Exited {
        mountpoint: mp.to_string(),
        status: status.to_string(),
        log: log.display().to_string(),
    })
}

fn default_log(cfg: &Config) -> PathBuf {
    let dir: &Path = &cfg.cache.dir;
    dir.join("s3cachefs.log")
}
