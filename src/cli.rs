//! The command line as typed: raw flags and environment values (clap), turned into a
//! validated [`Config`] by [`MountArgs::to_config`]. Every setting is a flag and an
//! environment variable; the flag wins.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
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

mod metrics;
mod raw;
mod shared;

pub use metrics::MetricsArgs;
use raw::Raw;
use shared::SharedArgs;
pub use shared::{GcArgs, SharedAction, SharedCommandArgs};

/// The longest `--cache-ttl-hours`: a hundred years, in effect never.
const MAX_TTL_HOURS: f64 = 24.0 * 365.0 * 100.0;

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
    /// Work on a shared cache tier (`mount --shared-cache`): `shared gc`
    Shared(SharedCommandArgs),
}

impl Command {
    /// The verbosity asked for by `-v` and `VERBOSE`, whichever the command.
    pub fn verbosity(&self) -> Result<u8, ConfigError> {
        match self {
            Command::Mount(a) => a.log.verbosity(),
            Command::Unmount(a) => a.log.verbosity(),
            Command::Stats(a) => a.log.verbosity(),
            Command::Clear(a) => a.log.verbosity(),
            Command::Warm(a) => a.log.verbosity(),
            Command::Shared(a) => match &a.action {
                SharedAction::Gc(g) => g.log.verbosity(),
            },
        }
    }
}

/// `-v`: every command has it, so the warnings of `stats`, `clear` and `warm` show too.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// More logging: -v debug, -vv trace (VERBOSE=true is -v; RUST_LOG overrides both)
    #[arg(short, long, action = ArgAction::Count, help_heading = "Logging")]
    pub verbose: u8,
}

impl LogArgs {
    pub fn verbosity(&self) -> Result<u8, ConfigError> {
        let mut verbosity = self.verbose;
        if let Ok(v) = std::env::var("VERBOSE")
            && config::parse_bool(&Origin("VERBOSE".into()), &v)?
        {
            verbosity = verbosity.max(1);
        }
        Ok(verbosity)
    }
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// The mount to take down
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub log: LogArgs,
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
    #[arg(long, env = "S3CACHEFS_FORCE_PATH_STYLE", value_parser = BoolishValueParser::new())]
    pub force_path_style: bool,
    /// Attempts per S3 request, with capped exponential backoff and jitter [default: 5]
    #[arg(
        long,
        env = "S3CACHEFS_MAX_ATTEMPTS",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub max_attempts: Option<String>,
}

impl S3Args {
    fn to_s3_options(&self, raw: &Raw) -> Result<S3Options, ConfigError> {
        let max_attempts = raw.u64_in(
            &self.max_attempts,
            ("max_attempts", "S3CACHEFS_MAX_ATTEMPTS"),
            1..=20,
            "attempts",
            5,
        )? as u32;
        let endpoint_url = match self.endpoint_url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => Some(config::parse_endpoint(
                &raw.origin("endpoint_url", "AWS_ENDPOINT_URL"),
                u,
            )?),
            None => None,
        };
        Ok(S3Options {
            profile: self.profile.clone().filter(|p| !p.is_empty()),
            region: self.region.clone().filter(|r| !r.is_empty()),
            endpoint_url,
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
    #[arg(
        long,
        env = "CACHE_MAX_SIZE_MB",
        value_name = "MB",
        allow_negative_numbers = true
    )]
    pub cache_max_size_mb: Option<String>,
    /// Entry limit when no mount has the cache [default: 200]
    #[arg(
        long,
        env = "CACHE_MAX_ENTRIES",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub cache_max_entries: Option<String>,
}

impl LimitArgs {
    fn to_limits(&self, raw: &Raw) -> Result<Limits, ConfigError> {
        let (max_size, max_entries) =
            parse_limits(raw, &self.cache_max_size_mb, &self.cache_max_entries)?;
        Ok(Limits {
            max_size,
            max_entries,
        })
    }
}

/// `--cache-max-size-mb` (returned in bytes) and `--cache-max-entries`, validated the same
/// way for `mount` and for the commands that inspect a cache.
fn parse_limits(
    raw: &Raw,
    max_size_mb: &Option<String>,
    max_entries: &Option<String>,
) -> Result<(u64, u64), ConfigError> {
    let size_mb = raw.u64_in(
        max_size_mb,
        ("cache_max_size_mb", "CACHE_MAX_SIZE_MB"),
        1..=1 << 30,
        "megabytes",
        DEFAULT_MAX_SIZE_MB,
    )?;
    let entries = raw.u64_in(
        max_entries,
        ("cache_max_entries", "CACHE_MAX_ENTRIES"),
        1..=100_000_000,
        "entries",
        DEFAULT_MAX_ENTRIES,
    )?;
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
    #[command(flatten)]
    pub log: LogArgs,
}

impl StatsArgs {
    pub fn to_target(&self, m: &ArgMatches) -> Result<StatsTarget, ConfigError> {
        let raw = Raw::new(m);
        raw.mountpoint_or_cache_dir(self.mountpoint.is_some())?;
        Ok(match &self.mountpoint {
            Some(p) => StatsTarget::Mount(p.clone()),
            None => StatsTarget::CacheDir {
                dir: self.cache_dir.resolve()?,
                limits: self.limits.to_limits(&raw)?,
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
    #[command(flatten)]
    pub log: LogArgs,
}

impl ClearArgs {
    pub fn to_target(&self, m: &ArgMatches) -> Result<ClearTarget, ConfigError> {
        Raw::new(m).mountpoint_or_cache_dir(self.mountpoint.is_some())?;
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
    #[arg(short, long, value_name = "N", allow_negative_numbers = true)]
    pub jobs: Option<String>,
    #[command(flatten)]
    pub cache_dir: CacheDirArg,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Age after which a cached object is fetched again, in hours, when no mount has the
    /// cache [default: 24]
    #[arg(
        long,
        env = "CACHE_TTL_HOURS",
        value_name = "HOURS",
        allow_negative_numbers = true
    )]
    pub cache_ttl_hours: Option<String>,

    #[command(flatten, next_help_heading = "S3 connection (s3:// with no mount)")]
    pub s3: S3Args,

    #[command(flatten)]
    pub log: LogArgs,
}

impl WarmArgs {
    pub fn to_settings(&self, m: &ArgMatches) -> Result<WarmSettings, ConfigError> {
        let raw = Raw::new(m);
        // --jobs has no environment variable.
        let jobs = raw.u64_in(&self.jobs, ("jobs", ""), 1..=256, "jobs", 8)? as usize;
        let ttl_hours = raw.f64_in(
            &self.cache_ttl_hours,
            ("cache_ttl_hours", "CACHE_TTL_HOURS"),
            0.001..=MAX_TTL_HOURS,
            "hours",
            DEFAULT_TTL_HOURS,
        )?;
        let s3 = self.s3.to_s3_options(&raw)?;
        Ok(WarmSettings {
            targets: self.paths.clone(),
            jobs,
            cache_dir: self.cache_dir.resolve()?,
            limits: self.limits.to_limits(&raw)?,
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
        help_heading = "Cache",
        allow_negative_numbers = true
    )]
    pub cache_max_size_mb: Option<String>,
    /// Most objects the cache holds [default: 200]
    #[arg(
        long,
        env = "CACHE_MAX_ENTRIES",
        value_name = "N",
        help_heading = "Cache",
        allow_negative_numbers = true
    )]
    pub cache_max_entries: Option<String>,
    /// Age after which a cached object is fetched again, in hours [default: 24]
    #[arg(
        long,
        env = "CACHE_TTL_HOURS",
        value_name = "HOURS",
        help_heading = "Cache",
        allow_negative_numbers = true
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
        help_heading = "Cache",
        allow_negative_numbers = true
    )]
    pub part_size_mb: Option<String>,
    /// Ranged GETs running at once per object being filled [default: 8]
    #[arg(
        long,
        env = "S3CACHEFS_FILL_CONCURRENCY",
        value_name = "N",
        help_heading = "Cache",
        allow_negative_numbers = true
    )]
    pub fill_concurrency: Option<String>,
    /// Longest a read waits for S3 before failing with EIO, in seconds [default: 60]
    #[arg(
        long,
        env = "S3CACHEFS_READ_TIMEOUT",
        value_name = "SECONDS",
        help_heading = "Cache",
        allow_negative_numbers = true
    )]
    pub read_timeout: Option<String>,
    /// Files of a directory fetched ahead once it is read in order; 0 turns it off
    /// [default: 8]
    #[arg(
        long,
        env = "S3CACHEFS_READAHEAD_FILES",
        value_name = "N",
        help_heading = "Cache",
        allow_negative_numbers = true
    )]
    pub readahead_files: Option<String>,
    /// How long a listing or HEAD result is trusted, in seconds [default: 60]
    #[arg(
        long,
        env = "S3CACHEFS_METADATA_TTL",
        value_name = "SECONDS",
        help_heading = "Cache",
        allow_negative_numbers = true
    )]
    pub metadata_ttl: Option<String>,

    #[command(flatten, next_help_heading = "Shared cache tier")]
    pub shared: SharedArgs,

    /// Stay attached to the terminal (default: return once the mount is live)
    #[arg(short, long, env = "S3CACHEFS_FOREGROUND", help_heading = "Mount", value_parser = BoolishValueParser::new())]
    pub foreground: bool,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)
    #[arg(long, env = "S3CACHEFS_ALLOW_OTHER", help_heading = "Mount", value_parser = BoolishValueParser::new())]
    pub allow_other: bool,
    /// Owner shown for files and directories [default: your uid]
    #[arg(
        long,
        env = "S3CACHEFS_UID",
        value_name = "UID",
        help_heading = "Mount",
        allow_negative_numbers = true
    )]
    pub uid: Option<String>,
    /// Group shown for files and directories [default: your gid]
    #[arg(
        long,
        env = "S3CACHEFS_GID",
        value_name = "GID",
        help_heading = "Mount",
        allow_negative_numbers = true
    )]
    pub gid: Option<String>,
    /// Permission bits of files [default: 0444]
    #[arg(
        long,
        env = "S3CACHEFS_FILE_MODE",
        value_name = "MODE",
        help_heading = "Mount",
        allow_negative_numbers = true
    )]
    pub file_mode: Option<String>,
    /// Permission bits of directories [default: 0555]
    #[arg(
        long,
        env = "S3CACHEFS_DIR_MODE",
        value_name = "MODE",
        help_heading = "Mount",
        allow_negative_numbers = true
    )]
    pub dir_mode: Option<String>,
    /// Threads answering the kernel [default: 4]
    #[arg(
        long,
        env = "S3CACHEFS_FUSE_THREADS",
        value_name = "N",
        help_heading = "Mount",
        allow_negative_numbers = true
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

    #[command(flatten, next_help_heading = "Metrics")]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub log: LogArgs,
    /// Where a background mount logs [default: <cache dir>/s3cachefs.log]
    #[arg(
        long,
        env = "S3CACHEFS_LOG_FILE",
        value_name = "FILE",
        help_heading = "Logging"
    )]
    pub log_file: Option<PathBuf>,
}

impl MountArgs {
    /// Validates everything; `m` are the matches of the `mount` subcommand (they say
    /// whether a value came from a flag or from the environment). `from_fstab`: the
    /// command line was translated from an fstab line, so errors name its options.
    pub fn to_config(&self, m: &ArgMatches, from_fstab: bool) -> Result<Config, ConfigError> {
        let raw = Raw {
            m,
            fstab: from_fstab,
        };
        let s3 = self.s3.to_s3_options(&raw)?;
        Ok(Config {
            mount: self.mount_settings(&raw)?,
            cache: self.cache_config(&raw, &s3)?,
            shared: self.shared.to_settings(&raw, &s3)?,
            s3,
            metrics: self.metrics.to_options(&raw)?,
        })
    }

    fn cache_config(&self, raw: &Raw, s3: &S3Options) -> Result<CacheConfig, ConfigError> {
        let enabled = raw.bool_unless_off(
            &self.cache_enabled,
            ("cache_enabled", "CACHE_ENABLED"),
            self.no_cache,
            "no_cache",
        )?;
        let (max_size, max_entries) =
            parse_limits(raw, &self.cache_max_size_mb, &self.cache_max_entries)?;
        let ttl_hours = raw.f64_in(
            &self.cache_ttl_hours,
            ("cache_ttl_hours", "CACHE_TTL_HOURS"),
            0.001..=MAX_TTL_HOURS,
            "hours",
            DEFAULT_TTL_HOURS,
        )?;
        let part_size_mb = raw.u64_in(
            &self.part_size_mb,
            ("part_size_mb", "S3CACHEFS_PART_SIZE_MB"),
            1..=1024,
            "megabytes",
            CacheConfig::DEFAULT_PART_SIZE >> 20,
        )?;
        let fill_concurrency = raw.u64_in(
            &self.fill_concurrency,
            ("fill_concurrency", "S3CACHEFS_FILL_CONCURRENCY"),
            1..=64,
            "requests",
            CacheConfig::DEFAULT_FILL_CONCURRENCY as u64,
        )? as usize;
        let read_timeout = raw.f64_in(
            &self.read_timeout,
            ("read_timeout", "S3CACHEFS_READ_TIMEOUT"),
            0.1..=86_400.0,
            "seconds",
            CacheConfig::DEFAULT_READ_TIMEOUT.as_secs_f64(),
        )?;
        let validate_etag = raw.bool_unless_off(
            &self.validate_etag,
            ("validate_etag", "CACHE_VALIDATE_ETAG"),
            self.no_validate_etag,
            "no_validate_etag",
        )?;
        let cache_dir = match &self.cache_dir {
            Some(d) => config::absolute(d),
            None => config::default_cache_dir()?,
        };
        Ok(CacheConfig {
            enabled,
            max_size,
            max_entries,
            ttl: Duration::from_secs_f64(ttl_hours * 3600.0),
            validate_etag,
            profile: s3.profile.clone().unwrap_or_else(|| "default".into()),
            part_size: part_size_mb << 20,
            fill_concurrency,
            read_timeout: Duration::from_secs_f64(read_timeout),
            ..CacheConfig::at(cache_dir)
        })
    }

    fn mount_settings(&self, raw: &Raw) -> Result<MountSettings, ConfigError> {
        let source = match &self.bucket {
            Some(b) => config::parse_source(&raw.origin("bucket", "S3CACHEFS_BUCKET"), b)?,
            None => Source::AllBuckets,
        };
        let metadata_ttl = raw.f64_in(
            &self.metadata_ttl,
            ("metadata_ttl", "S3CACHEFS_METADATA_TTL"),
            0.0..=86_400.0 * 365.0,
            "seconds",
            DEFAULT_METADATA_TTL_SECS,
        )?;
        // SAFETY: getuid/getgid cannot fail.
        let (my_uid, my_gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let id = |v, names, mine: u32| {
            raw.u64_in(v, names, 0..=u32::MAX as u64, "an id", mine as u64)
                .map(|n| n as u32)
        };
        let uid = id(&self.uid, ("uid", "S3CACHEFS_UID"), my_uid)?;
        let gid = id(&self.gid, ("gid", "S3CACHEFS_GID"), my_gid)?;
        let file_mode = raw.mode(
            &self.file_mode,
            ("file_mode", "S3CACHEFS_FILE_MODE"),
            crate::fs::DEFAULT_FILE_MODE,
        )?;
        let dir_mode = raw.mode(
            &self.dir_mode,
            ("dir_mode", "S3CACHEFS_DIR_MODE"),
            crate::fs::DEFAULT_DIR_MODE,
        )?;
        let fuse_threads = raw.u64_in(
            &self.fuse_threads,
            ("fuse_threads", "S3CACHEFS_FUSE_THREADS"),
            1..=64,
            "threads",
            crate::fuse::DEFAULT_THREADS as u64,
        )? as usize;
        let readahead_files = raw.u64_in(
            &self.readahead_files,
            ("readahead_files", "S3CACHEFS_READAHEAD_FILES"),
            0..=64,
            "files",
            DEFAULT_READAHEAD_FILES as u64,
        )? as usize;
        let passthrough = raw.bool(
            &self.passthrough,
            ("passthrough", "S3CACHEFS_PASSTHROUGH"),
            true,
        )?;
        Ok(MountSettings {
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
        })
    }
}

#[cfg(test)]
mod tests;
