//! Validated settings: what `cli.rs` parses from flags and the environment ends up here,
//! checked, with defaults in one place. A bad value is an error naming the flag or the
//! environment variable it came from and the form expected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::CacheConfig;
pub use crate::fs::Source;
use crate::fuse::FuseOptions;
pub use crate::metrics::MetricsOptions;
use crate::store::S3Options;

// The defaults belong to the layers that use the settings; here in the units of the
// flags.
pub const DEFAULT_MAX_SIZE_MB: u64 = CacheConfig::DEFAULT_MAX_SIZE_MB;
pub const DEFAULT_MAX_ENTRIES: u64 = CacheConfig::DEFAULT_MAX_ENTRIES;
pub const DEFAULT_TTL_HOURS: f64 = CacheConfig::DEFAULT_TTL.as_secs() as f64 / 3600.0;
pub const DEFAULT_METADATA_TTL_SECS: f64 = crate::fs::DEFAULT_METADATA_TTL.as_secs() as f64;
pub const DEFAULT_READAHEAD_FILES: usize = crate::fs::DEFAULT_READAHEAD_FILES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {setting}: expected {expected}")]
    Invalid {
        /// `--flag` or `ENV_VAR`, whichever the value came from.
        setting: String,
        value: String,
        expected: String,
    },
    /// Two settings given together that cannot both hold, each as the user wrote it
    /// (`--no-cache`, `--cache-enabled true`).
    #[error("{0} and {1} cannot be used together: give only one of them")]
    Conflict(String, String),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone)]
pub struct MountSettings {
    pub mountpoint: PathBuf,
    pub source: Source,
    /// How long a listing or HEAD result is trusted.
    pub metadata_ttl: Duration,
    pub allow_other: bool,
    pub foreground: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub fuse_threads: usize,
    /// Files fetched ahead in a directory read in order (0: off).
    pub readahead_files: usize,
    /// Use FUSE passthrough for complete cache files when the kernel allows it.
    pub passthrough: bool,
    pub log_file: Option<PathBuf>,
}

impl MountSettings {
    /// What the FUSE layer needs of these.
    pub fn fuse_options(&self) -> FuseOptions {
        FuseOptions {
            mountpoint: self.mountpoint.clone(),
            allow_other: self.allow_other,
            threads: self.fuse_threads,
            passthrough: self.passthrough,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mount: MountSettings,
    pub s3: S3Options,
    pub cache: CacheConfig,
    /// The shared cache tier, when one is given.
    pub shared: Option<SharedSettings>,
    /// `/metrics`: off unless an address is given.
    pub metrics: MetricsOptions,
}

/// The shared cache tier: where it is, how to reach it, how this mount uses it.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// The tier's endpoint, region and profile (each the origin's unless given).
    pub s3: S3Options,
    /// Bytes; larger objects do not go through the tier.
    pub max_object_size: Option<u64>,
    pub read_only: bool,
}

/// Names a setting for error messages: the flag or the environment variable the value
/// came from.
#[derive(Debug, Clone)]
pub struct Origin(pub String);

fn invalid(origin: &Origin, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        setting: origin.0.clone(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

pub fn parse_bool(origin: &Origin, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            origin,
            value,
            "true or false (also 1/0, yes/no, on/off)",
        )),
    }
}

pub fn parse_u64_in(
    origin: &Origin,
    value: &str,
    min: u64,
    max: u64,
    what: &str,
) -> Result<u64, ConfigError> {
    let expected = format!("{what}: a whole number from {min} to {max}");
    let n: u64 = value
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| invalid(origin, value, &expected))?;
    if n < min || n > max {
        return Err(invalid(origin, value, &expected));
    }
    Ok(n)
}

pub fn parse_f64_in(
    origin: &Origin,
    value: &str,
    min: f64,
    max: f64,
    what: &str,
) -> Result<f64, ConfigError> {
    let expected = format!("{what}: a number from {min} to {max} (decimals allowed)");
    let n: f64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(origin, value, &expected))?;
    if !n.is_finite() || n < min || n > max {
        return Err(invalid(origin, value, &expected));
    }
    Ok(n)
}

/// `0444`, `444` or `0o444`: permission bits only.
pub fn parse_mode(origin: &Origin, value: &str) -> Result<u16, ConfigError> {
    let v = value.trim();
    let digits = v.strip_prefix("0o").unwrap_or(v);
    match u16::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(invalid(
            origin,
            value,
            "an octal mode from 000 to 777, e.g. 0444",
        )),
    }
}

/// `bucket` or `bucket/some/prefix`.
pub fn parse_source(origin: &Origin, value: &str) -> Result<Source, ConfigError> {
    let v = value.trim().trim_start_matches("s3://");
    let (bucket, prefix) = v.split_once('/').unwrap_or((v, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
        });
    if !valid_bucket {
        return Err(invalid(
            origin,
            value,
            "a bucket name (3-63 characters: a-z 0-9 . - _), optionally followed by /prefix",
        ));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok(Source::Bucket {
        bucket: bucket.to_string(),
        prefix,
    })
}

/// An S3 endpoint: `http://` or `https://`, a host, an optional port and path. Anything
/// else the SDK would take apart as it can and fail on later with a misleading message
/// (`notaurl` ends up as "Invalid region").
pub fn parse_endpoint(origin: &Origin, value: &str) -> Result<String, ConfigError> {
    let bad = || {
        invalid(
            origin,
            value,
            "a URL: http:// or https:// then a host, e.g. http://127.0.0.1:9000",
        )
    };
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // `[::1]:9000`: the brackets hold the colons of an IPv6 address.
    let (host, port) = match authority.strip_prefix('[') {
        Some(r) => {
            let (h, after) = r.split_once(']').ok_or_else(bad)?;
            (h, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if !host_ok || !port_ok {
        return Err(bad());
    }
    Ok(v.to_string())
}

/// `$XDG_CACHE_HOME/s3cachefs`, else `~/.cache/s3cachefs`.
pub fn default_cache_dir() -> Result<PathBuf, ConfigError> {
    let from = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    if let Some(x) = from("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Ok(x.join("s3cachefs"));
    }
    if let Some(home) = from("HOME") {
        return Ok(home.join(".cache").join("s3cachefs"));
    }
    Err(ConfigError::Other(
        "cannot choose a cache directory: neither XDG_CACHE_HOME nor HOME is set; \
         set CACHE_DIR or pass --cache-dir"
            .into(),
    ))
}

pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> Origin {
        Origin(s.into())
    }

    #[test]
    fn errors_name_the_setting_and_the_form() {
        let e = parse_u64_in(&o("CACHE_MAX_SIZE_MB"), "abc", 1, 10, "megabytes").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("CACHE_MAX_SIZE_MB"), "{msg}");
        assert!(msg.contains("\"abc\""), "{msg}");
        assert!(msg.contains("whole number"), "{msg}");
        assert!(parse_u64_in(&o("x"), "0", 1, 10, "n").is_err());
        assert_eq!(parse_u64_in(&o("x"), " 10 ", 1, 10, "n"), Ok(10));
    }

    #[test]
    fn bools_modes_and_floats() {
        assert_eq!(parse_bool(&o("x"), "TRUE"), Ok(true));
        assert_eq!(parse_bool(&o("x"), "off"), Ok(false));
        assert!(parse_bool(&o("VERBOSE"), "maybe").is_err());
        assert_eq!(parse_mode(&o("x"), "0444"), Ok(0o444));
        assert_eq!(parse_mode(&o("x"), "755"), Ok(0o755));
        assert!(parse_mode(&o("x"), "999").is_err());
        assert!(parse_mode(&o("x"), "").is_err());
        assert_eq!(parse_f64_in(&o("x"), "0.5", 0.0, 10.0, "h"), Ok(0.5));
        assert!(parse_f64_in(&o("x"), "NaN", 0.0, 10.0, "h").is_err());
        assert!(parse_f64_in(&o("x"), "-1", 0.0, 10.0, "h").is_err());
    }

    #[test]
    fn endpoints_must_be_urls() {
        for good in [
            "http://127.0.0.1:9000",
            "https://s3.eu-west-1.amazonaws.com",
            "HTTP://minio.local/",
            "http://[::1]:9000/base",
        ] {
            assert_eq!(
                parse_endpoint(&o("x"), good),
                Ok(good.to_string()),
                "{good}"
            );
        }
        for bad in [
            "notaurl",
            "127.0.0.1:9000",
            "ftp://host",
            "http://",
            "http://:9000",
            "http://host:port",
            "http://host:0",
            "http://a b",
            "http://[::1",
        ] {
            let e = parse_endpoint(&o("--endpoint-url"), bad).expect_err(bad);
            assert!(e.to_string().contains("--endpoint-url"), "{e}");
        }
    }

    #[test]
    fn sources() {
        assert_eq!(
            parse_source(&o("x"), "my-bucket/a/b/"),
            Ok(Source::Bucket {
                bucket: "my-bucket".into(),
                prefix: "a/b/".into()
            })
        );
        assert_eq!(
            parse_source(&o("x"), "s3://my-bucket"),
            Ok(Source::Bucket {
                bucket: "my-bucket".into(),
                prefix: String::new()
            })
        );
        assert!(parse_source(&o("--bucket"), "Bad Bucket").is_err());
    }
}
