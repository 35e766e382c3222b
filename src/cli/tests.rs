//! Tests of `cli`.

use super::*;

/// The defaults `--help` states are the ones a mount gets. (Runs where none of these
/// variables is set, as the test environment is.)
#[test]
fn help_defaults_are_the_real_defaults() {
    let cfg = parse(&["s3cachefs", "mount", "/mnt"]).expect("defaults parse");
    let actual: Vec<(&str, f64)> = vec![
        ("max-attempts", cfg.s3.max_attempts as f64),
        ("cache-max-size-mb", (cfg.cache.max_size >> 20) as f64),
        ("cache-max-entries", cfg.cache.max_entries as f64),
        ("cache-ttl-hours", cfg.cache.ttl.as_secs_f64() / 3600.0),
        ("part-size-mb", (cfg.cache.part_size >> 20) as f64),
        ("fill-concurrency", cfg.cache.fill_concurrency as f64),
        ("read-timeout", cfg.cache.read_timeout.as_secs_f64()),
        ("readahead-files", cfg.mount.readahead_files as f64),
        ("metadata-ttl", cfg.mount.metadata_ttl.as_secs_f64()),
        ("fuse-threads", cfg.mount.fuse_threads as f64),
    ];
    let cli = Cli::command();
    let mount = cli.find_subcommand("mount").expect("mount subcommand");
    for (long, value) in actual {
        let arg = mount
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .unwrap_or_else(|| panic!("no --{long}"));
        if arg.get_env().is_some_and(|e| std::env::var_os(e).is_some()) {
            continue;
        }
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let stated: f64 = help
            .split("[default: ")
            .nth(1)
            .and_then(|d| d.split(']').next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("--{long}: no [default: N] in {help:?}"));
        assert_eq!(
            stated, value,
            "--{long}: help says {stated}, a mount gets {value}"
        );
    }
    assert_eq!(cfg.mount.file_mode, 0o444);
    assert_eq!(cfg.mount.dir_mode, 0o555);
}

/// Raw's messages name the flag a bad value came from: every flag with a default
/// in `--help` is given garbage, and the error must say which flag it was.
#[test]
fn a_bad_value_is_reported_under_its_own_flag() {
    let cli = Cli::command();
    let mount = cli.find_subcommand("mount").expect("mount subcommand");
    let mut checked = 0;
    for arg in mount.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        if !help.contains("[default: ") || ["cache-dir", "log-file"].contains(&long) {
            continue;
        }
        let flag = format!("--{long}");
        let err = parse(&["s3cachefs", "mount", "/mnt", &flag, "garbage"])
            .expect_err("garbage is refused");
        assert!(err.to_string().contains(&flag), "{flag}: {err}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} flags checked");
}

/// The README's configuration table is the users' reference: every `mount` flag is
/// in it, on a row naming the flag's environment variable and, where `--help` gives
/// one, its default. (The fstab option list is checked the same way in fstab.rs.)
#[test]
fn the_readme_table_says_what_mount_help_says() {
    let readme = include_str!("../../README.md");
    let table: Vec<&str> = readme
        .split("## Configuration")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Configuration section")
        .lines()
        .filter(|l| l.starts_with("| `"))
        .collect();
    let cli = Cli::command();
    let mount = cli.find_subcommand("mount").expect("mount subcommand");
    for arg in mount.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        let flag = format!("`--{long}");
        let row = table
            .iter()
            .find(|r| r.contains(&format!("{flag}`")) || r.contains(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("--{long} is not in the README's table"));
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(
                row.contains(&format!("`{env}`")),
                "--{long}: {env} not in {row}"
            );
        }
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        if let Some(default) = help
            .split("[default: ")
            .nth(1)
            .and_then(|d| d.split(']').next())
            .filter(|d| d.chars().all(|c| c.is_ascii_digit()))
        {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert!(
                cells
                    .get(3)
                    .is_some_and(|c| c.split(", ").any(|v| v == default)),
                "--{long}: default {default} (from --help) is not the README's {row}"
            );
        }
    }
}
use clap::{CommandFactory, FromArgMatches};

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    let matches = Cli::command()
        .try_get_matches_from(args)
        .expect("clap accepts the flags");
    let cli = Cli::from_arg_matches(&matches).expect("derive");
    let Command::Mount(m) = cli.command else {
        panic!("mount expected")
    };
    let (_, sub) = matches.subcommand().expect("subcommand");
    m.to_config(sub, false)
}

#[test]
fn flags_become_a_config() {
    let c = parse(&[
        "s3cachefs",
        "mount",
        "/mnt/x",
        "--bucket",
        "media/videos",
        "--cache-max-size-mb",
        "1024",
        "--cache-max-entries",
        "5000",
        "--cache-ttl-hours",
        "0.5",
        "--no-validate-etag",
        "--cache-dir",
        "/tmp/c",
        "--file-mode",
        "0440",
    ])
    .expect("valid");
    assert_eq!(c.cache.max_size, 1024 << 20);
    assert_eq!(c.cache.max_entries, 5000);
    assert_eq!(c.cache.ttl, Duration::from_secs(1800));
    assert!(!c.cache.validate_etag);
    assert_eq!(c.mount.file_mode, 0o440);
    assert_eq!(
        c.mount.source,
        Source::Bucket {
            bucket: "media".into(),
            prefix: "videos/".into()
        }
    );
}

#[test]
fn no_flags_give_the_documented_defaults() {
    let c = parse(&["s3cachefs", "mount", "/mnt/x"]).expect("valid");
    assert!(c.cache.enabled && c.cache.validate_etag && c.mount.passthrough);
    assert_eq!(c.cache.max_size, DEFAULT_MAX_SIZE_MB << 20);
    assert_eq!(c.cache.max_entries, DEFAULT_MAX_ENTRIES);
    assert_eq!(c.cache.ttl, Duration::from_secs(24 * 3600));
    assert_eq!(c.cache.part_size, CacheConfig::DEFAULT_PART_SIZE);
    assert_eq!(
        c.cache.fill_concurrency,
        CacheConfig::DEFAULT_FILL_CONCURRENCY
    );
    assert_eq!(c.cache.read_timeout, CacheConfig::DEFAULT_READ_TIMEOUT);
    assert_eq!(c.s3.max_attempts, 5);
    assert_eq!(c.mount.fuse_threads, 4);
    assert_eq!(c.mount.readahead_files, DEFAULT_READAHEAD_FILES);
    assert_eq!((c.mount.file_mode, c.mount.dir_mode), (0o444, 0o555));
    // SAFETY: getuid cannot fail.
    assert_eq!(c.mount.uid, unsafe { libc::getuid() });
}

#[test]
fn every_checked_flag_names_itself_when_its_value_is_bad() {
    for flag in [
        "--cache-enabled",
        "--cache-max-size-mb",
        "--cache-max-entries",
        "--cache-ttl-hours",
        "--part-size-mb",
        "--fill-concurrency",
        "--read-timeout",
        "--validate-etag",
        "--metadata-ttl",
        "--uid",
        "--gid",
        "--file-mode",
        "--dir-mode",
        "--fuse-threads",
        "--readahead-files",
        "--passthrough",
        "--max-attempts",
    ] {
        let e = parse(&["s3cachefs", "mount", "/mnt/x", flag, "bogus"])
            .expect_err("a bad value is refused");
        assert!(e.to_string().contains(flag), "{flag}: {e}");
    }
}

#[test]
fn bad_flag_value_names_the_flag() {
    let e = parse(&["s3cachefs", "mount", "/mnt/x", "--cache-max-size-mb", "abc"])
        .expect_err("invalid");
    let msg = e.to_string();
    assert!(
        msg.contains("--cache-max-size-mb") && msg.contains("whole number"),
        "{msg}"
    );
}
