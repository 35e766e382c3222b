//! `/etc/fstab` support: mount(8) hands a FUSE line to `mount.fuse3`, which runs
//! `s3cachefs DEVICE MOUNTPOINT -o OPTIONS` (for `s3cachefs#bucket ... fuse` lines and for
//! `-t fuse.s3cachefs` lines alike), and a `mount.fuse.s3cachefs` symlink to the binary is
//! run as `mount.fuse.s3cachefs DEVICE MOUNTPOINT [-sfnv] -o OPTIONS`. This module turns
//! such a call into the arguments of `s3cachefs mount`; all of it is pure.
//!
//! - DEVICE is a bucket, `bucket/prefix` or `s3://bucket/prefix` (`--bucket`), or `s3://`
//!   for every bucket the credentials can list.
//! - Each option named like a mount flag with `_` for `-` becomes that flag:
//!   `cache_max_size_mb=1000` → `--cache-max-size-mb 1000`, `allow_other` →
//!   `--allow-other` (table in [`OPTIONS`]).
//! - Options meant for mount(8) or the kernel (`rw`, `ro`, `defaults`, `_netdev`,
//!   `nofail`, `dev`, `suid`, `x-systemd.*`, ...) are ignored: the mount is always
//!   read-only, nosuid and nodev.
//! - Anything else is refused by name, so a typo never silently drops a setting.

use std::ffi::{OsStr, OsString};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FstabError {
    #[error("unknown mount option {0:?} (see `s3cachefs mount --help`: flag names with _ for -)")]
    UnknownOption(String),
    #[error("mount option {0:?} needs a value, e.g. {0}=...")]
    NeedsValue(String),
    #[error("mount option {0:?} takes no value")]
    TakesNoValue(String),
    #[error("usage: s3cachefs DEVICE MOUNTPOINT -o OPTIONS (as run by mount.fuse3): {0}")]
    Usage(String),
}

/// Whether a mount option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    Value,
    Flag,
}

/// fstab option → `s3cachefs mount` flag.
const OPTIONS: &[(&str, Arg, &str)] = &[
    ("profile", Arg::Value, "--profile"),
    ("region", Arg::Value, "--region"),
    ("endpoint_url", Arg::Value, "--endpoint-url"),
    ("force_path_style", Arg::Flag, "--force-path-style"),
    ("max_attempts", Arg::Value, "--max-attempts"),
    ("cache_enabled", Arg::Value, "--cache-enabled"),
    ("no_cache", Arg::Flag, "--no-cache"),
    ("cache_dir", Arg::Value, "--cache-dir"),
    ("cache_max_size_mb", Arg::Value, "--cache-max-size-mb"),
    ("cache_max_entries", Arg::Value, "--cache-max-entries"),
    ("cache_ttl_hours", Arg::Value, "--cache-ttl-hours"),
    ("validate_etag", Arg::Value, "--validate-etag"),
    ("no_validate_etag", Arg::Flag, "--no-validate-etag"),
    ("metadata_ttl", Arg::Value, "--metadata-ttl"),
    ("allow_other", Arg::Flag, "--allow-other"),
    ("uid", Arg::Value, "--uid"),
    ("gid", Arg::Value, "--gid"),
    ("file_mode", Arg::Value, "--file-mode"),
    ("dir_mode", Arg::Value, "--dir-mode"),
    ("fuse_threads", Arg::Value, "--fuse-threads"),
    ("readahead_files", Arg::Value, "--readahead-files"),
    ("part_size_mb", Arg::Value, "--part-size-mb"),
    ("fill_concurrency", Arg::Value, "--fill-concurrency"),
    ("read_timeout", Arg::Value, "--read-timeout"),
    ("passthrough", Arg::Value, "--passthrough"),
    ("log_file", Arg::Value, "--log-file"),
    ("shared_cache", Arg::Value, "--shared-cache"),
    ("shared_endpoint_url", Arg::Value, "--shared-endpoint-url"),
    ("shared_region", Arg::Value, "--shared-region"),
    ("shared_profile", Arg::Value, "--shared-profile"),
    (
        "shared_max_object_size_mb",
        Arg::Value,
        "--shared-max-object-size-mb",
    ),
    ("shared_read_only", Arg::Flag, "--shared-read-only"),
    ("metrics_addr", Arg::Value, "--metrics-addr"),
    ("metrics_allow_remote", Arg::Flag, "--metrics-allow-remote"),
    // Repeated for more labels: metrics_label=host=web-1,metrics_label=role=etl
    ("metrics_label", Arg::Value, "--metrics-label"),
    ("verbose", Arg::Flag, "-v"),
];

/// Options for mount(8), mount.fuse3 or the kernel that say nothing to s3cachefs.
const IGNORED: &[&str] = &[
    "defaults",
    "rw",
    "ro",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "sync",
    "async",
    "silent",
    "loud",
    // s3cachefs always asks the kernel to check permissions.
    "default_permissions",
    // Handled by mount.fuse3 before s3cachefs runs.
    "drop_privileges",
];

/// Ignored by prefix: `x-systemd.automount`, `comment=...`, `setuid=alice`.
const IGNORED_PREFIXES: &[&str] = &["x-", "comment=", "setuid="];

/// Turns mount options (already split at commas) into `s3cachefs mount` flags.
pub fn options_to_flags<S: AsRef<str>>(options: &[S]) -> Result<Vec<String>, FstabError> {
    let mut flags = Vec::new();
    for opt in options.iter().map(AsRef::as_ref) {
        let opt = opt.trim();
        if opt.is_empty()
            || IGNORED.contains(&opt)
            || IGNORED_PREFIXES.iter().any(|p| opt.starts_with(p))
        {
            continue;
        }
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        let Some((_, arg, flag)) = OPTIONS.iter().find(|(n, _, _)| *n == name) else {
            return Err(FstabError::UnknownOption(opt.to_string()));
        };
        match (arg, value) {
            (Arg::Flag, None) => flags.push(flag.to_string()),
            (Arg::Flag, Some(_)) => return Err(FstabError::TakesNoValue(name.to_string())),
            (Arg::Value, Some(v)) if !v.is_empty() => {
                flags.push(flag.to_string());
                flags.push(v.to_string());
            }
            (Arg::Value, _) => return Err(FstabError::NeedsValue(name.to_string())),
        }
    }
    Ok(flags)
}

/// A call by mount.fuse3 or mount(8), taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCall {
    pub device: String,
    pub mountpoint: OsString,
    /// Every `-o` list, split at commas.
    pub options: Vec<String>,
    /// `-f`: mount(8)'s "fake" mode: check everything, mount nothing.
    pub fake: bool,
}

/// Whether `argv` (with argv\[0\]) is a mount helper call rather than an ordinary command
/// line: run through a `mount.*` name, or with a first argument that is no subcommand and
/// an `-o` option list, as mount.fuse3 passes.
pub fn is_helper_call(argv: &[OsString], subcommands: &[&str]) -> bool {
    let name = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(OsStr::to_str)
        .unwrap_or("");
    if name.starts_with("mount.") {
        return true;
    }
    let Some(first) = argv.get(1).and_then(|a| a.to_str()) else {
        return false;
    };
    !first.starts_with('-')
        && !subcommands.contains(&first)
        && argv[2..]
            .iter()
            .any(|a| a.to_str().is_some_and(|s| s.starts_with("-o")))
}

/// Parses the arguments after argv\[0\] of a helper call.
pub fn parse_helper_args(args: &[OsString]) -> Result<HelperCall, FstabError> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else {
            positional.push(a.clone());
            continue;
        };
        match s {
            "-o" => {
                let list = it
                    .next()
                    .and_then(|v| v.to_str())
                    .ok_or_else(|| FstabError::Usage("-o needs an option list".into()))?;
                options.extend(list.split(',').map(str::to_string));
            }
            // mount(8)'s flags to helpers: sloppy, no mtab, verbose; and -t from mount.fuse.
            "-s" | "-n" | "-v" => {}
            "-f" => fake = true,
            "-t" => {
                it.next();
            }
            _ if s.starts_with("-o") => options.extend(s[2..].split(',').map(str::to_string)),
            _ if s.starts_with('-') && s.len() > 1 => {
                return Err(FstabError::Usage(format!("unknown flag {s}")));
            }
            _ => positional.push(a.clone()),
        }
    }
    let [device, mountpoint]: [OsString; 2] = positional.try_into().map_err(|p: Vec<_>| {
        FstabError::Usage(format!(
            "expected DEVICE and MOUNTPOINT, got {} arguments",
            p.len()
        ))
    })?;
    let device = device
        .into_string()
        .map_err(|_| FstabError::Usage("DEVICE is not valid UTF-8".into()))?;
    Ok(HelperCall {
        device,
        mountpoint,
        options,
        fake,
    })
}

/// The `s3cachefs mount ...` arguments (without argv\[0\]) that do what `call` asks.
pub fn mount_args(call: &HelperCall) -> Result<Vec<OsString>, FstabError> {
    let mut out: Vec<OsString> = vec!["mount".into(), call.mountpoint.clone()];
    let device = call.device.trim();
    // `s3://` alone: every bucket, as `s3cachefs mount` without --bucket.
    if device != "s3://" {
        out.push("--bucket".into());
        out.push(device.into());
    }
    out.extend(
        options_to_flags(&call.options)?
            .into_iter()
            .map(OsString::from),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_become_flags_and_generic_ones_are_ignored() {
        let opts = "rw,_netdev,nofail,defaults,allow_other,cache_max_size_mb=1000,\
                    endpoint_url=http://127.0.0.1:9000,force_path_style,profile=prod,\
                    uid=1000,gid=100,ro,x-systemd.automount,dev,suid,noatime,\
                    cache_dir=/var/cache/s3cachefs/media,verbose";
        let opts: Vec<&str> = opts.split(',').collect();
        assert_eq!(
            options_to_flags(&opts).expect("valid"),
            [
                "--allow-other",
                "--cache-max-size-mb",
                "1000",
                "--endpoint-url",
                "http://127.0.0.1:9000",
                "--force-path-style",
                "--profile",
                "prod",
                "--uid",
                "1000",
                "--gid",
                "100",
                "--cache-dir",
                "/var/cache/s3cachefs/media",
                "-v",
            ]
        );
    }

    /// Every `mount` flag has its option, but the ones fstab says another way: the
    /// bucket is the DEVICE, and mount(8) waits for the helper (no --foreground).
    #[test]
    fn every_mount_flag_has_an_option() {
        use clap::CommandFactory;
        let cli = crate::cli::Cli::command();
        let mount = cli.find_subcommand("mount").expect("mount subcommand");
        for arg in mount.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "bucket", "foreground"].contains(&long) {
                continue;
            }
            let flag = format!("--{long}");
            assert!(
                OPTIONS
                    .iter()
                    .any(|(_, _, f)| *f == flag || (long == "verbose" && *f == "-v")),
                "{flag} has no fstab option"
            );
            let option = long.replace('-', "_");
            assert!(
                OPTIONS.iter().any(|(o, _, _)| *o == option),
                "{flag}: its option is not {option}"
            );
        }
    }

    #[test]
    fn mistakes_are_refused_by_name() {
        assert_eq!(
            options_to_flags(&["cache_max_size=5"]),
            Err(FstabError::UnknownOption("cache_max_size=5".into()))
        );
        assert_eq!(
            options_to_flags(&["profile"]),
            Err(FstabError::NeedsValue("profile".into()))
        );
        assert_eq!(
            options_to_flags(&["profile="]),
            Err(FstabError::NeedsValue("profile".into()))
        );
        assert_eq!(
            options_to_flags(&["allow_other=1"]),
            Err(FstabError::TakesNoValue("allow_other".into()))
        );
        let e = options_to_flags(&["bogus"])
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("\"bogus\""), "{e}");
    }

    #[test]
    fn mount_fuse3_calls_are_recognised() {
        let subs = ["mount", "unmount", "stats", "clear", "warm", "help"];
        let yes = |v: &[&str]| is_helper_call(&os(v), &subs);
        assert!(yes(&["s3cachefs", "media", "/mnt/m", "-o", "rw,dev,suid"]));
        assert!(yes(&[
            "/usr/local/bin/s3cachefs",
            "media",
            "/mnt/m",
            "-orw"
        ]));
        assert!(yes(&["/sbin/mount.fuse.s3cachefs", "media", "/mnt/m"]));
        assert!(!yes(&["s3cachefs", "mount", "/mnt/m", "-o", "x"]));
        assert!(!yes(&["s3cachefs", "stats", "/mnt/m"]));
        assert!(!yes(&["s3cachefs", "media", "/mnt/m"]));
        assert!(!yes(&["s3cachefs", "--help"]));
        assert!(!yes(&["s3cachefs"]));
    }

    #[test]
    fn helper_calls_become_mount_commands() {
        let call = parse_helper_args(&os(&[
            "media/videos",
            "/mnt/m",
            "-o",
            "rw,allow_other,cache_max_size_mb=1000,dev,suid",
            "-n",
        ]))
        .expect("parse");
        assert!(!call.fake);
        assert_eq!(
            mount_args(&call).expect("translate"),
            os(&[
                "mount",
                "/mnt/m",
                "--bucket",
                "media/videos",
                "--allow-other",
                "--cache-max-size-mb",
                "1000",
            ])
        );
        // s3:// alone mounts every bucket; -o may come first and more than once.
        let call = parse_helper_args(&os(&["-oro", "s3://", "/mnt/s3", "-f", "-o", "profile=p"]))
            .expect("parse");
        assert!(call.fake);
        assert_eq!(
            mount_args(&call).expect("translate"),
            os(&["mount", "/mnt/s3", "--profile", "p"])
        );
        assert!(parse_helper_args(&os(&["media"])).is_err());
        assert!(parse_helper_args(&os(&["media", "/mnt", "-x"])).is_err());
        assert!(parse_helper_args(&os(&["media", "/mnt", "-o"])).is_err());
    }
}
