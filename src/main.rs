//! The `s3cachefs` command: parse, set up logging, hand over to the library.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

use s3cachefs::cli::{Cli, Command};
use s3cachefs::config::Config;

/// Set in the background child: the fd to report readiness on.
const READY_FD_ENV: &str = "S3CACHEFS_READY_FD";
const READY_FD: RawFd = 3;

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Mount(args) => {
            let sub = matches
                .subcommand()
                .map(|(_, m)| m.clone())
                .unwrap_or_default();
            let cfg = match args.to_config(&sub) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("s3cachefs: {e}");
                    return ExitCode::from(2);
                }
            };
            match mount(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("s3cachefs: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Unmount(a) => match s3cachefs::fuse::unmount_path(&a.mountpoint) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("s3cachefs: unmounting {}: {e}", a.mountpoint.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging(verbosity: u8) {
    let default = match verbosity {
        0 => "s3cachefs=info,fuser=error,warn",
        1 => "s3cachefs=debug,fuser=error,info",
        // Only our own trace: the SDK's trace output includes signed request headers.
        _ => "s3cachefs=trace,fuser=warn,info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn mount(cfg: Config) -> Result<()> {
    if !cfg.mount.foreground {
        return spawn_background(&cfg);
    }
    init_logging(cfg.verbosity);
    // In the background child, readiness goes back to the waiting parent on fd 3.
    let mut ready_pipe = std::env::var(READY_FD_ENV)
        .ok()
        .map(|_| unsafe { std::fs::File::from_raw_fd(READY_FD) });
    s3cachefs::mount::run(cfg, |r| {
        if let Some(mut p) = ready_pipe.take() {
            let msg = match &r {
                Ok(()) => "READY\n".to_string(),
                Err(e) => format!("ERROR {e}\n"),
            };
            let _ = p.write_all(msg.as_bytes());
        }
    })?;
    Ok(())
}

/// Runs the mount in a detached child and waits until it is live (or has failed).
fn spawn_background(cfg: &Config) -> Result<()> {
    let log = cfg
        .mount
        .log_file
        .clone()
        .unwrap_or_else(|| default_log(cfg));
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    // SAFETY: pipe2 just returned these fds; each is owned once.
    let mut read_end = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let write_end = fds[1];
    let exe = std::env::current_exe().context("finding the s3cachefs binary")?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let mut child = Process::new(exe);
    child
        .args(args)
        .env(READY_FD_ENV, READY_FD.to_string())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
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
    let spawned = child.spawn().context("starting the background mount");
    // SAFETY: the parent's copy of the write end is ours to close.
    unsafe { libc::close(write_end) };
    let mut child = spawned?;
    let mut said = String::new();
    let _ = read_end.read_to_string(&mut said);
    let mp = cfg.mount.mountpoint.display();
    if said.starts_with("READY") {
        println!("s3cachefs: mounted at {mp} (logs: {})", log.display());
        return Ok(());
    }
    if let Some(msg) = said.strip_prefix("ERROR ") {
        let _ = child.wait();
        anyhow::bail!("{}", msg.trim_end());
    }
    let status = child.wait()?;
    anyhow::bail!(
        "the background mount at {mp} exited ({status}) before it was ready; see {}",
        log.display()
    )
}

fn default_log(cfg: &Config) -> PathBuf {
    let dir: &Path = &cfg.cache.dir;
    dir.join("s3cachefs.log")
}
