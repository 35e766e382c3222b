//! The `s3cachefs` command: parse, set up logging, hand over to the library.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

use s3cachefs::admin::{clear, stats, warm};
use s3cachefs::cli::{Cli, Command, SharedAction};
use s3cachefs::config::Config;
use s3cachefs::daemon;
use s3cachefs::fstab;

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
    let sub = sub_matches(&matches);
    match cli.command {
        Command::Mount(args) => run_mount(args, sub, from_fstab, &argv),
        Command::Unmount(a) => run_unmount(&a.mountpoint),
        Command::Stats(a) => match a.to_target(sub) {
            Err(e) => config_error(e),
            Ok(target) => finish(admin(async move {
                let report = stats::collect(&target).await?;
                if a.json {
                    print!("{}", report.json);
                } else {
                    print!("{}", stats::render(&report));
                }
                Ok(())
            })),
        },
        Command::Clear(a) => match a.to_target(sub) {
            Err(e) => config_error(e),
            Ok(target) => finish(admin(async move {
                println!("s3cachefs: {}", clear::clear(&target).await?);
                Ok(())
            })),
        },
        Command::Shared(a) => match &a.action {
            SharedAction::Gc(g) => {
                let gc_matches = sub.subcommand().map(|(_, m)| m).unwrap_or(sub);
                match g.to_settings(gc_matches) {
                    Err(e) => config_error(e),
                    Ok(settings) => finish(admin(async move {
                        print!("{}", s3cachefs::admin::shared::gc(&settings).await?);
                        Ok(())
                    })),
                }
            }
        },
        Command::Warm(a) => match a.to_settings(sub) {
            Err(e) => config_error(e),
            Ok(settings) => finish(admin(async move {
                let report = warm::run(&settings).await;
                print!("{report}");
                match report.failures() {
                    None => Ok(()),
                    Some(what) => anyhow::bail!("{what}"),
                }
            })),
        },
    }
}

fn run_mount(
    args: Box<s3cachefs::cli::MountArgs>,
    sub: &clap::ArgMatches,
    from_fstab: bool,
    argv: &[OsString],
) -> ExitCode {
    let cfg = match args.to_config(sub, from_fstab) {
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

fn run_unmount(mountpoint: &std::path::Path) -> ExitCode {
    let mut lingering = None;
    let done = admin(async {
        lingering = s3cachefs::admin::unmount::run(mountpoint).await?;
        Ok(())
    });
    match done {
        Ok(()) => {
            if let Some(pid) = lingering {
                eprintln!(
                    "s3cachefs: {} is unmounted, but its process {pid} is still closing the \
                     cache; a new mount on that cache directory fails until it exits",
                    mountpoint.display()
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
        return Ok(daemon::spawn_background(&cfg, args)?);
    }
    let mut ready = daemon::Readiness::from_env();
    s3cachefs::mount::run(cfg, |r| ready.report(&r))?;
    Ok(())
}
