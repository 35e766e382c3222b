//! The `s3cachefs` command: parse, set up logging, hand over to the library.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

use s3cachefs::admin::{clear, stats, warm};
use s3cachefs::cli::{Cli, Command};
use s3cachefs::config::Config;
use s3cachefs::fstab;

/// Set in the background child: the fd to report readiness on.
const READY_FD_ENV: &str = "S3CACHEFS_READY_FD";
const READY_FD: RawFd = 3;

fn main() -> ExitCode {
    let line = match command_line() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("s3cachefs: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(CommandLine { argv, from_fstab }) = line else {
        // mount -f (fake): the fstab line translated; nothing to mount.
        return ExitCode::SUCCESS;
    };
    let matches = match Cli::command().try_get_matches_from(&argv) {
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
    let verbosity = match cli.command.verbosity() {
        Ok(v) => v,
        Err(e) => return config_error(e),
    };
    init_logging(verbosity, matches!(cli.command, Command::Mount(_)));
    match cli.command {
        Command::Mount(args) => {
            let sub = matches
                .subcommand()
                .map(|(_, m)| m.clone())
                .unwrap_or_default();
            let cfg = match args.to_config(&sub, from_fstab) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("s3cachefs: {e}");
                    return ExitCode::from(2);
                }
            };
            match mount(cfg, &argv[1..]) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("s3cachefs: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Unmount(a) => {
            let mut lingering = None;
            let done = admin(async {
                lingering = s3cachefs::admin::unmount::run(&a.mountpoint).await?;
                Ok(())
            });
            match done {
                Ok(()) => {
                    if let Some(pid) = lingering {
                        eprintln!(
                            "s3cachefs: {} is unmounted, but its process {pid} is still \
                             closing the cache; a new mount on that cache directory fails until \
                             it exits",
                            a.mountpoint.display()
                        );
                    }
                    ExitCode::SUCCESS
                }
                // Every error of unmount names the mountpoint.
                Err(e) => {
                    eprintln!("s3cachefs: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Stats(a) => {
            let target = match a.to_target(sub_matches(&matches)) {
                Ok(t) => t,
                Err(e) => return config_error(e),
            };
            finish(admin(async move {
                let report = stats::collect(&target).await?;
                if a.json {
                    print!("{}", report.json);
                } else {
                    print!("{}", stats::render(&report));
                }
                Ok(())
            }))
        }
        Command::Clear(a) => {
            let target = match a.to_target(sub_matches(&matches)) {
                Ok(t) => t,
                Err(e) => return config_error(e),
            };
            finish(admin(async move {
                println!("s3cachefs: {}", clear::clear(&target).await?);
                Ok(())
            }))
        }
        Command::Warm(a) => {
            let settings = match a.to_settings(sub_matches(&matches)) {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            finish(admin(async move {
                let report = warm::run(&settings).await;
                print!("{report}");
                match report.failures() {
                    None => Ok(()),
                    Some(what) => anyhow::bail!("{what}"),
                }
            }))
        }
    }
}

/// The arguments to parse.
struct CommandLine {
    argv: Vec<OsString>,
    /// Translated from an fstab line: errors name its options, not our flags.
    from_fstab: bool,
}

/// The arguments to parse: as given, or, when mount(8) / mount.fuse3 runs us for an
/// `/etc/fstab` line, the `s3cachefs mount ...` they stand for. `None`: mount's fake mode.
fn command_line() -> Result<Option<CommandLine>> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let subcommands: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .chain(["help".to_string()])
        .collect();
    let names: Vec<&str> = subcommands.iter().map(String::as_str).collect();
    if !fstab::is_helper_call(&argv, &names) {
        return Ok(Some(CommandLine {
            argv,
            from_fstab: false,
        }));
    }
    let call = fstab::parse_helper_args(&argv[1..])?;
    let mut translated = vec![OsString::from("s3cachefs")];
    translated.extend(fstab::mount_args(&call)?);
    Ok((!call.fake).then_some(CommandLine {
        argv: translated,
        from_fstab: true,
    }))
}

fn sub_matches(m: &clap::ArgMatches) -> &clap::ArgMatches {
    m.subcommand().map(|(_, s)| s).unwrap_or(m)
}

fn config_error(e: s3cachefs::config::ConfigError) -> ExitCode {
    eprintln!("s3cachefs: {e}");
    ExitCode::from(2)
}

/// Runs an operating command on a small runtime of its own.
fn admin(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(work)
}

fn finish(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3cachefs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (a background mount's stderr is its log file). `RUST_LOG` overrides
/// the level chosen here.
fn init_logging(verbosity: u8, mount: bool) {
    let default = match verbosity {
        // A mount logs its configuration and a periodic summary; the other commands print
        // a report of their own, so by default only their warnings.
        0 if mount => "s3cachefs=info,fuser=error,warn",
        0 => "warn",
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

/// `args`: the command line after argv\[0\] (translated from an fstab call if it was
/// one), for the background child to run again in the foreground.
fn mount(cfg: Config, args: &[OsString]) -> Result<()> {
    if !cfg.mount.foreground {
        return spawn_background(&cfg, args);
    }
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
fn spawn_background(cfg: &Config, args: &[OsString]) -> Result<()> {
    let log = match &cfg.mount.log_file {
        Some(l) => {
            if let Some(dir) = l.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            l.clone()
        }
        None => {
            // The log goes in the cache directory: only once it is known to be ours.
            s3cachefs::cache::check_dir(&cfg.cache.dir)?;
            default_log(cfg)
        }
    };
    let log_file = s3cachefs::cache::open_private_append(&log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    // SAFETY: pipe2 just returned these fds; each is owned once.
    let mut read_end = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    // The child logs it too, but only to its log file: looked at before the mount covers
    // the directory, said here once the mount is up.
    let hidden = s3cachefs::mount::hidden_by_mount(&cfg.mount.mountpoint);
    let write_end = fds[1];
    let exe = std::env::current_exe().context("finding the s3cachefs binary")?;
    let mut args = args.to_vec();
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
        if let Some(hidden) = hidden {
            eprintln!("s3cachefs: warning: {hidden}");
        }
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
