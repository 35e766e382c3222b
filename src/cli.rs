//! The command line as typed: raw flags and environment values (clap), turned into a
//! validated [`Config`] by [`MountArgs::to_config`]. Every setting is a flag and an
//! environment variable; the flag wins.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Parser, Subcommand};

use crate::admin::Limits;
use crate::admin::clear::ClearTarget;
use crate::admin::stats::StatsTarget;
use crate::admin::warm::WarmSettings;
use crate::cache::CacheConfig;
use crate::config::{
    self, Config, ConfigError, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_SIZE_MB, DEFAULT_METADATA_TTL_SECS,
    DEFAULT_READAHEAD_FILES, DEFAULT_TTL_HOURS, MountSettings, Origin, Source,
};
use crate::store::S3Options;

#[derive(Debug, Parser)]
#[command(
    name = "s3cachefs",
    version,
    about = "Mount S3 read-only, with a persistent local cache for repeated reads",
    long_about = "Mount Amazon S3 (or an S3-compatible store) as a read-only directory tree. \
        Reads are served from a local on-disk cache that is filled on demand, survives \
        restarts and stays within its size and entry limits. `cat MOUNTPOINT/.cache-stats` \
        shows how well the cache is doing.\n\n\
        Credentials come from the usual AWS chain: environment, ~/.aws/config and \
        ~/.aws/credentials (with --profile), SSO, or instance metadata."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount buckets (or one bucket) at MOUNTPOINT
    Mount(Box<MountArgs>),
    /// Unmount an s3cachefs mount
    Unmount(UnmountArgs),
    /// Show how the cache is doing: hit rate, size and entries of their limits, bytes saved
    Stats(StatsArgs),
    /// Empty the cache, also while it is mounted (files already open keep reading)
    Clear(ClearArgs),
    /// Fetch files, directories or s3:// prefixes into the cache ahead of use
    Warm(Box<WarmArgs>),
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// The mount to take down
    pub mountpoint: PathBuf,
}

/// `--cache-dir`, for the commands that work on a cache without mounting it.
#[derive(Debug, Args)]
pub struct CacheDirArg {
    /// Cache directory [default: $XDG_CACHE_HOME/s3cachefs or ~/.cache/s3cachefs]
    #[arg(long, env = "CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl CacheDirArg {
    pub fn resolve(&self) -> Result<PathBuf, ConfigError> {
        match &self.cache_dir {
            Some(d) => Ok(config::absolute(d)),
            None => config::default_cache_dir(),
        }
    }
}

/// Where S3 is and how to reach it: the same flags for `mount` and for `warm`.
#[derive(Debug, Args)]
pub struct S3Args {
    /// AWS profile from ~/.aws/config; also part of the cache key
    #[arg(long, env = "AWS_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
    /// AWS region (default: from the profile, else us-east-1)
    #[arg(long, env = "AWS_REGION", value_name = "REGION")]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server, e.g. http://127.0.0.1:9000
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Address buckets as http://host/bucket (most S3-compatible servers need this)
    #[arg(long, env = "S3CACHEFS_FORCE_PATH_STYLE")]
    pub force_path_style: bool,
    /// Attempts per S3 request, with capped exponential backoff and jitter [default: 5]
    #[arg(long, env = "S3CACHEFS_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<String>,
}

impl S3Args {
    pub fn to_s3_options(&self, m: &ArgMatches) -> Result<S3Options, ConfigError> {
        let max_attempts = match &self.max_attempts {
            Some(v) => config::parse_u64_in(
                &origin(m, "max_attempts", "max-attempts", "S3CACHEFS_MAX_ATTEMPTS"),
                v,
                1,
                20,
                "attempts",
            )? as u32,
            None => 5,
        };
        Ok(S3Options {
            profile: self.profile.clone().filter(|p| !p.is_empty()),
            region: self.region.clone().filter(|r| !r.is_empty()),
            endpoint_url: self.endpoint_url.clone().filter(|u| !u.is_empty()),
            force_path_style: self.force_path_style,
            max_attempts,
            ..S3Options::default()
        })
    }
}

/// The limits a cache is compared with when no mount says what they are.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Size limit when no mount has the cache, in MiB [default: 500]
    #[arg(long, env = "CACHE_MAX_SIZE_MB", value_name = "MB")]
    pub cache_max_size_mb: Option<String>,
    /// Entry limit when no mount has the cache [default: 200]
    #[arg(long, env = "CACHE_MAX_ENTRIES", value_name = "N")]
    pub cache_max_entries: Option<String>,
}

impl LimitArgs {
    pub fn to_limits(&self, m: &ArgMatches) -> Result<Limits, ConfigError> {
        let (max_size, max_entries) =
            parse_limits(m, &self.cache_max_size_mb, &self.cache_max_entries)?;
        Ok(Limits {
            max_size,
            max_entries,
        })
    }
}

/// `--cache-max-size-mb` (returned in bytes) and `--cache-max-entries`, validated the same
/// way for `mount` and for the commands that inspect a cache.
fn parse_limits(
    m: &ArgMatches,
    max_size_mb: &Option<String>,
    max_entries: &Option<String>,
) -> Result<(u64, u64), ConfigError> {
    let size_mb = match max_size_mb {
        Some(v) => config::parse_u64_in(
            &origin(
                m,
                "cache_max_size_mb",
                "cache-max-size-mb",
                "CACHE_MAX_SIZE_MB",
            ),
            v,
            1,
            1 << 30,
            "megabytes",
        )?,
        None => DEFAULT_MAX_SIZE_MB,
    };
    let entries = match max_entries {
        Some(v) => config::parse_u64_in(
            &origin(
                m,
                "cache_max_entries",
                "cache-max-entries",
                "CACHE_MAX_ENTRIES",
            ),
            v,
            1,
            100_000_000,
            "entries",
        )?,
        None => DEFAULT_MAX_ENTRIES,
    };
    Ok((size_mb * 1024 * 1024, entries))
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// A mountpoint (or any path in a mount). Without it, the cache directory is read, or
    /// the mount using it is asked
    pub mountpoint: Option<PathBuf>,
    #[command(flatten)]
    pub cache_dir: CacheDirArg,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Print the JSON document instead of the summary
    #[arg(long)]
    pub json: bool,
}

impl StatsArgs {
    pub fn to_target(&self, m: &ArgMatches) -> Result<StatsTarget, ConfigError> {
        Ok(match &self.mountpoint {
            Some(p) => StatsTarget::Mount(p.clone()),
            None => StatsTarget::CacheDir {
                dir: self.cache_dir.resolve()?,
                limits: self.limits.to_limits(m)?,
            },
        })
    }
}

#[derive(Debug, Args)]
pub struct ClearArgs {
    /// A mountpoint (or any path in a mount) whose cache to empty. Without it, the cache
    /// directory is emptied, by the mount using it if there is one
    pub mountpoint: Option<PathBuf>,
    #[command(flatten)]
    pub cache_dir: CacheDirArg,
}

impl ClearArgs {
    pub fn to_target(&self) -> Result<ClearTarget, ConfigError> {
        Ok(match &self.mountpoint {
            Some(p) => ClearTarget::Mount(p.clone()),
            None => ClearTarget::CacheDir(self.cache_dir.resolve()?),
        })
    }
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    /// Files or directories in a mount, or s3://BUCKET/PREFIX (into the cache of
    /// --cache-dir: through the mount using it, or directly when none does)
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Objects fetched at once [default: 8]
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<String>,
    #[command(flatten)]
    pub cache_dir: CacheDirArg,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Age after which a cached object is fetched again, in hours, when no mount has the
    /// cache [default: 24]
    #[arg(long, env = "CACHE_TTL_HOURS", value_name = "HOURS")]
    pub cache_ttl_hours: Option<String>,

    #[command(flatten, next_help_heading = "S3 connection (s3:// with no mount)")]
    pub s3: S3Args,
}

impl WarmArgs {
    pub fn to_settings(&self, m: &ArgMatches) -> Result<WarmSettings, ConfigError> {
        let jobs = match &self.jobs {
            Some(v) => {
                config::parse_u64_in(&origin(m, "jobs", "jobs", "--jobs"), v, 1, 256, "jobs")?
                    as usize
            }
            None => 8,
        };
        let ttl_hours = match &self.cache_ttl_hours {
            Some(v) => config::parse_f64_in(
                &origin(m, "cache_ttl_hours", "cache-ttl-hours", "CACHE_TTL_HOURS"),
                v,
                0.001,
                24.0 * 365.0 * 100.0,
                "hours",
            )?,
            None => DEFAULT_TTL_HOURS,
        };
        let s3 = self.s3.to_s3_options(m)?;
        Ok(WarmSettings {
            targets: self.paths.clone(),
            jobs,
            cache_dir: self.cache_dir.resolve()?,
            limits: self.limits.to_limits(m)?,
            ttl: Duration::from_secs_f64(ttl_hours * 3600.0),
            profile: s3.profile.clone().unwrap_or_else(|| "default".into()),
            s3,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        })
    }
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Existing directory to mount on
    pub mountpoint: PathBuf,

    /// Mount one bucket (or a prefix of it) as the root instead of listing every bucket
    #[arg(
        long,
        env = "S3CACHEFS_BUCKET",
        value_name = "BUCKET[/PREFIX]",
        help_heading = "What to mount"
    )]
    pub bucket: Option<String>,

    #[command(flatten, next_help_heading = "S3 connection")]
    pub s3: S3Args,

    /// Use the local cache (false: every read goes to S3) [default: true]
    #[arg(
        long,
        env = "CACHE_ENABLED",
        value_name = "BOOL",
        help_heading = "Cache"
    )]
    pub cache_enabled: Option<String>,
    /// Same as --cache-enabled false
    #[arg(long, help_heading = "Cache")]
    pub no_cache: bool,
    /// Cache directory [default: $XDG_CACHE_HOME/s3cachefs or ~/.cache/s3cachefs]
    #[arg(long, env = "CACHE_DIR", value_name = "DIR", help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the cache holds, in MiB [default: 500]
    #[arg(
        long,
        env = "CACHE_MAX_SIZE_MB",
        value_name = "MB",
        help_heading = "Cache"
    )]
    pub cache_max_size_mb: Option<String>,
    /// Most objects the cache holds [default: 200]
    #[arg(
        long,
        env = "CACHE_MAX_ENTRIES",
        value_name = "N",
        help_heading = "Cache"
    )]
    pub cache_max_entries: Option<String>,
    /// Age after which a cached object is fetched again, in hours [default: 24]
    #[arg(
        long,
        env = "CACHE_TTL_HOURS",
        value_name = "HOURS",
        help_heading = "Cache"
    )]
    pub cache_ttl_hours: Option<String>,
    /// Check a cached object's ETag with S3 on open [default: true]
    #[arg(
        long,
        env = "CACHE_VALIDATE_ETAG",
        value_name = "BOOL",
        help_heading = "Cache"
    )]
    pub validate_etag: Option<String>,
    /// Same as --validate-etag false: trust cached copies until their TTL
    #[arg(long, help_heading = "Cache")]
    pub no_validate_etag: bool,
    /// Size of each ranged GET when filling the cache, in MiB [default: 8]
    #[arg(
        long,
        env = "S3CACHEFS_PART_SIZE_MB",
        value_name = "MB",
        help_heading = "Cache"
    )]
    pub part_size_mb: Option<String>,
    /// Ranged GETs running at once per object being filled [default: 8]
    #[arg(
        long,
        env = "S3CACHEFS_FILL_CONCURRENCY",
        value_name = "N",
        help_heading = "Cache"
    )]
    pub fill_concurrency: Option<String>,
    /// Longest a read waits for S3 before failing with EIO, in seconds [default: 60]
    #[arg(
        long,
        env = "S3CACHEFS_READ_TIMEOUT",
        value_name = "SECONDS",
        help_heading = "Cache"
    )]
    pub read_timeout: Option<String>,
    /// Files of a directory fetched ahead once it is read in order; 0 turns it off
    /// [default: 8]
    #[arg(
        long,
        env = "S3CACHEFS_READAHEAD_FILES",
        value_name = "N",
        help_heading = "Cache"
    )]
    pub readahead_files: Option<String>,
    /// How long a listing or HEAD result is trusted, in seconds [default: 60]
    #[arg(
        long,
        env = "S3CACHEFS_METADATA_TTL",
        value_name = "SECONDS",
        help_heading = "Cache"
    )]
    pub metadata_ttl: Option<String>,

    /// Stay attached to the terminal (default: return once the mount is live)
    #[arg(short, long, env = "S3CACHEFS_FOREGROUND", help_heading = "Mount")]
    pub foreground: bool,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)
    #[arg(long, env = "S3CACHEFS_ALLOW_OTHER", help_heading = "Mount")]
    pub allow_other: bool,
    /// Owner shown for files and directories [default: your uid]
    #[arg(
        long,
        env = "S3CACHEFS_UID",
        value_name = "UID",
        help_heading = "Mount"
    )]
    pub uid: Option<String>,
    /// Group shown for files and directories [default: your gid]
    #[arg(
        long,
        env = "S3CACHEFS_GID",
        value_name = "GID",
        help_heading = "Mount"
    )]
    pub gid: Option<String>,
    /// Permission bits of files [default: 0444]
    #[arg(
        long,
        env = "S3CACHEFS_FILE_MODE",
        value_name = "MODE",
        help_heading = "Mount"
    )]
    pub file_mode: Option<String>,
    /// Permission bits of directories [default: 0555]
    #[arg(
        long,
        env = "S3CACHEFS_DIR_MODE",
        value_name = "MODE",
        help_heading = "Mount"
    )]
    pub dir_mode: Option<String>,
    /// Threads answering the kernel [default: 4]
    #[arg(
        long,
        env = "S3CACHEFS_FUSE_THREADS",
        value_name = "N",
        help_heading = "Mount"
    )]
    pub fuse_threads: Option<String>,
    /// Let the kernel read complete cache files directly (FUSE passthrough) when it
    /// can [default: true]
    #[arg(
        long,
        env = "S3CACHEFS_PASSTHROUGH",
        value_name = "BOOL",
        help_heading = "Mount"
    )]
    pub passthrough: Option<String>,

    /// More logging: -v debug, -vv trace (VERBOSE=true is -v; RUST_LOG overrides both)
    #[arg(short, long, action = ArgAction::Count, help_heading = "Logging")]
    pub verbose: u8,
    /// Where a background mount logs [default: <cache dir>/s3cachefs.log]
    #[arg(
        long,
        env = "S3CACHEFS_LOG_FILE",
        value_name = "FILE",
        help_heading = "Logging"
    )]
    pub log_file: Option<PathBuf>,
}

/// The flag or environment variable a value came from.
fn origin(m: &ArgMatches, id: &str, flag: &str, env: &str) -> Origin {
    match m.value_source(id) {
        Some(ValueSource::EnvVariable) => Origin(env.to_string()),
        _ => Origin(format!("--{flag}")),
    }
}

impl MountArgs {
    /// Validates everything; `m` are the matches of the `mount` subcommand (they say
    /// whether a value came from a flag or from the environment).
    pub fn to_config(&self, m: &ArgMatches) -> Result<Config, ConfigError> {
        let o = |id: &str, flag: &str, env: &str| origin(m, id, flag, env);

        let source = match &self.bucket {
            Some(b) => config::parse_source(&o("bucket", "bucket", "S3CACHEFS_BUCKET"), b)?,
            None => Source::AllBuckets,
        };
        let s3 = self.s3.to_s3_options(m)?;
        let mut enabled = match &self.cache_enabled {
            Some(v) => {
                config::parse_bool(&o("cache_enabled", "cache-enabled", "CACHE_ENABLED"), v)?
            }
            None => true,
        };
        if self.no_cache {
            enabled = false;
        }
        let (max_size, max_entries) =
            parse_limits(m, &self.cache_max_size_mb, &self.cache_max_entries)?;
        let ttl_hours = match &self.cache_ttl_hours {
            Some(v) => config::parse_f64_in(
                &o("cache_ttl_hours", "cache-ttl-hours", "CACHE_TTL_HOURS"),
                v,
                0.001,
                24.0 * 365.0 * 100.0,
                "hours",
            )?,
            None => DEFAULT_TTL_HOURS,
        };
        let part_size_mb = match &self.part_size_mb {
            Some(v) => config::parse_u64_in(
                &o("part_size_mb", "part-size-mb", "S3CACHEFS_PART_SIZE_MB"),
                v,
                1,
                1024,
                "megabytes",
            )?,
            None => CacheConfig::DEFAULT_PART_SIZE >> 20,
        };
        let fill_concurrency = match &self.fill_concurrency {
            Some(v) => config::parse_u64_in(
                &o(
                    "fill_concurrency",
                    "fill-concurrency",
                    "S3CACHEFS_FILL_CONCURRENCY",
                ),
                v,
                1,
                64,
                "requests",
            )? as usize,
            None => CacheConfig::DEFAULT_FILL_CONCURRENCY,
        };
        let read_timeout = match &self.read_timeout {
            Some(v) => Duration::from_secs_f64(config::parse_f64_in(
                &o("read_timeout", "read-timeout", "S3CACHEFS_READ_TIMEOUT"),
                v,
                0.1,
                86_400.0,
                "seconds",
            )?),
            None => CacheConfig::DEFAULT_READ_TIMEOUT,
        };
        let mut validate_etag = match &self.validate_etag {
            Some(v) => config::parse_bool(
                &o("validate_etag", "validate-etag", "CACHE_VALIDATE_ETAG"),
                v,
            )?,
            None => true,
        };
        if self.no_validate_etag {
            validate_etag = false;
        }
        let metadata_ttl = match &self.metadata_ttl {
            Some(v) => config::parse_f64_in(
                &o("metadata_ttl", "metadata-ttl", "S3CACHEFS_METADATA_TTL"),
                v,
                0.0,
                86_400.0 * 365.0,
                "seconds",
            )?,
            None => DEFAULT_METADATA_TTL_SECS,
        };
        let id = |v: &Option<String>, idn: &str, flag: &str, env: &str, dflt: u32| match v {
            Some(v) => config::parse_u64_in(&o(idn, flag, env), v, 0, u32::MAX as u64, "an id")
                .map(|n| n as u32),
            None => Ok(dflt),
        };
        // SAFETY: getuid/getgid cannot fail.
        let (my_uid, my_gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let uid = id(&self.uid, "uid", "uid", "S3CACHEFS_UID", my_uid)?;
        let gid = id(&self.gid, "gid", "gid", "S3CACHEFS_GID", my_gid)?;
        let file_mode = match &self.file_mode {
            Some(v) => config::parse_mode(&o("file_mode", "file-mode", "S3CACHEFS_FILE_MODE"), v)?,
            None => 0o444,
        };
        let dir_mode = match &self.dir_mode {
            Some(v) => config::parse_mode(&o("dir_mode", "dir-mode", "S3CACHEFS_DIR_MODE"), v)?,
            None => 0o555,
        };
        let fuse_threads = match &self.fuse_threads {
            Some(v) => config::parse_u64_in(
                &o("fuse_threads", "fuse-threads", "S3CACHEFS_FUSE_THREADS"),
                v,
                1,
                64,
                "threads",
            )? as usize,
            None => 4,
        };
        let readahead_files = match &self.readahead_files {
            Some(v) => config::parse_u64_in(
                &o(
                    "readahead_files",
                    "readahead-files",
                    "S3CACHEFS_READAHEAD_FILES",
                ),
                v,
                0,
                64,
                "files",
            )? as usize,
            None => DEFAULT_READAHEAD_FILES,
        };
        let passthrough = match &self.passthrough {
            Some(v) => {
                config::parse_bool(&o("passthrough", "passthrough", "S3CACHEFS_PASSTHROUGH"), v)?
            }
            None => true,
        };
        let mut verbosity = self.verbose;
        if let Ok(v) = std::env::var("VERBOSE")
            && config::parse_bool(&Origin("VERBOSE".into()), &v)?
        {
            verbosity = verbosity.max(1);
        }
        let cache_dir = match &self.cache_dir {
            Some(d) => config::absolute(d),
            None => config::default_cache_dir()?,
        };
        Ok(Config {
            mount: MountSettings {
                mountpoint: config::absolute(&self.mountpoint),
                source,
                metadata_ttl: Duration::from_secs_f64(metadata_ttl),
                allow_other: self.allow_other,
                foreground: self.foreground,
                uid,
                gid,
                file_mode,
                dir_mode,
                fuse_threads,
                readahead_files,
                passthrough,
                log_file: self.log_file.as_deref().map(config::absolute),
            },
            cache: CacheConfig {
                enabled,
                dir: cache_dir,
                max_size,
                max_entries,
                ttl: Duration::from_secs_f64(ttl_hours * 3600.0),
                validate_etag,
                profile: s3.profile.clone().unwrap_or_else(|| "default".into()),
                sweep_interval: Duration::from_secs(60),
                part_size: part_size_mb << 20,
                fill_concurrency,
                read_timeout,
            },
            s3,
            verbosity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        m.to_config(sub)
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
    fn bad_flag_value_names_the_flag() {
        let e = parse(&["s3cachefs", "mount", "/mnt/x", "--cache-max-size-mb", "abc"])
            .expect_err("invalid");
        let msg = e.to_string();
        assert!(
            msg.contains("--cache-max-size-mb") && msg.contains("whole number"),
            "{msg}"
        );
    }
}
