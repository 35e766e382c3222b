//! The flags of the shared cache tier (`--shared-*`), turned into [`SharedSettings`].

use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgMatches, Args};

use super::raw::Raw;
use crate::admin::shared::GcSettings;
use crate::cache::shared::gc::Limits;
use crate::cache::shared::parse_url;
use crate::config::{self, ConfigError, SharedSettings};
use crate::store::S3Options;

#[derive(Debug, Args)]
pub struct SharedArgs {
    /// A bucket (of any S3-compatible store) that many hosts share as a second cache
    /// tier: blocks are read from it before the origin and written to it after [default:
    /// none]
    #[arg(
        long,
        env = "S3CACHEFS_SHARED_CACHE",
        value_name = "s3://BUCKET[/PREFIX]"
    )]
    pub shared_cache: Option<String>,
    /// Endpoint of the shared tier's store [default: the origin's]
    #[arg(long, env = "S3CACHEFS_SHARED_ENDPOINT_URL", value_name = "URL")]
    pub shared_endpoint_url: Option<String>,
    /// Region of the shared tier's bucket [default: the origin's]
    #[arg(long, env = "S3CACHEFS_SHARED_REGION", value_name = "REGION")]
    pub shared_region: Option<String>,
    /// AWS profile for the shared tier [default: the origin's]
    #[arg(long, env = "S3CACHEFS_SHARED_PROFILE", value_name = "NAME")]
    pub shared_profile: Option<String>,
    /// Larger objects bypass the shared tier, in MiB [default: no limit]
    #[arg(
        long,
        env = "S3CACHEFS_SHARED_MAX_OBJECT_SIZE_MB",
        value_name = "MB",
        allow_negative_numbers = true
    )]
    pub shared_max_object_size_mb: Option<String>,
    /// Read blocks from the shared tier, never write any (short-lived or untrusted hosts)
    #[arg(long, env = "S3CACHEFS_SHARED_READ_ONLY", value_parser = BoolishValueParser::new())]
    pub shared_read_only: bool,
}

impl SharedArgs {
    /// `origin` is the origin's connection, whose endpoint, region and profile the tier
    /// takes unless given its own.
    pub(super) fn to_settings(
        &self,
        raw: &Raw,
        origin: &S3Options,
    ) -> Result<Option<SharedSettings>, ConfigError> {
        let max_object_size = match &self.shared_max_object_size_mb {
            Some(v) => Some(
                raw.u64_in(
                    &Some(v.clone()),
                    (
                        "shared_max_object_size_mb",
                        "S3CACHEFS_SHARED_MAX_OBJECT_SIZE_MB",
                    ),
                    1..=5 << 20,
                    "megabytes",
                    0,
                )? << 20,
            ),
            None => None,
        };
        let endpoint_url = match self
            .shared_endpoint_url
            .as_deref()
            .filter(|u| !u.is_empty())
        {
            Some(u) => Some(config::parse_endpoint(
                &raw.origin("shared_endpoint_url", "S3CACHEFS_SHARED_ENDPOINT_URL"),
                u,
            )?),
            None => origin.endpoint_url.clone(),
        };
        let Some(url) = self.shared_cache.as_deref().filter(|u| !u.is_empty()) else {
            let given = [
                (
                    "shared_endpoint_url",
                    "S3CACHEFS_SHARED_ENDPOINT_URL",
                    self.shared_endpoint_url.is_some(),
                ),
                (
                    "shared_region",
                    "S3CACHEFS_SHARED_REGION",
                    self.shared_region.is_some(),
                ),
                (
                    "shared_profile",
                    "S3CACHEFS_SHARED_PROFILE",
                    self.shared_profile.is_some(),
                ),
                (
                    "shared_max_object_size_mb",
                    "S3CACHEFS_SHARED_MAX_OBJECT_SIZE_MB",
                    max_object_size.is_some(),
                ),
                (
                    "shared_read_only",
                    "S3CACHEFS_SHARED_READ_ONLY",
                    self.shared_read_only,
                ),
            ];
            if let Some((id, env, _)) = given.iter().find(|(_, _, g)| *g) {
                return Err(ConfigError::Other(format!(
                    "{} needs a shared cache tier: give --shared-cache s3://BUCKET[/PREFIX] too",
                    raw.origin(id, env).0
                )));
            }
            return Ok(None);
        };
        let (bucket, prefix) = parse_url(url).map_err(|why| ConfigError::Invalid {
            setting: raw.origin("shared_cache", "S3CACHEFS_SHARED_CACHE").0,
            value: url.to_string(),
            expected: format!("s3://BUCKET[/PREFIX] ({why})"),
        })?;
        let pick = |own: &Option<String>, theirs: &Option<String>| {
            own.clone()
                .filter(|v| !v.is_empty())
                .or_else(|| theirs.clone())
        };
        Ok(Some(SharedSettings {
            bucket,
            prefix,
            s3: S3Options {
                profile: pick(&self.shared_profile, &origin.profile),
                region: pick(&self.shared_region, &origin.region),
                endpoint_url,
                ..origin.clone()
            },
            max_object_size,
            read_only: self.shared_read_only,
        }))
    }
}

/// `s3cachefs shared ...`: work on a shared cache tier itself.
#[derive(Debug, Args)]
pub struct SharedCommandArgs {
    #[command(subcommand)]
    pub action: SharedAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum SharedAction {
    /// Keep a shared cache tier within a size and an age: deletes whole object versions,
    /// least recently written first
    Gc(Box<GcArgs>),
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The tier, as given to `mount --shared-cache`
    #[arg(value_name = "s3://BUCKET[/PREFIX]")]
    pub url: String,
    /// Delete least recently written object versions until the tier holds at most this
    /// many GiB (fractions allowed)
    #[arg(long, value_name = "GB", allow_negative_numbers = true)]
    pub max_size_gb: Option<String>,
    /// Delete object versions last written more than this many days ago
    #[arg(long, value_name = "DAYS", allow_negative_numbers = true)]
    pub older_than: Option<String>,
    /// Say what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten, next_help_heading = "The tier's store")]
    pub s3: super::S3Args,
    #[command(flatten)]
    pub log: super::LogArgs,
}

impl GcArgs {
    pub fn to_settings(&self, m: &ArgMatches) -> Result<GcSettings, ConfigError> {
        let raw = Raw::new(m);
        let (bucket, prefix) = parse_url(&self.url).map_err(|why| ConfigError::Invalid {
            setting: "the tier URL".into(),
            value: self.url.clone(),
            expected: format!("s3://BUCKET[/PREFIX] ({why})"),
        })?;
        let max_size = match &self.max_size_gb {
            Some(_) => Some(
                (raw.f64_in(
                    &self.max_size_gb,
                    ("max_size_gb", ""),
                    0.0..=1e9,
                    "GiB",
                    0.0,
                )? * (1u64 << 30) as f64) as u64,
            ),
            None => None,
        };
        let older_than = match &self.older_than {
            Some(_) => Some(Duration::from_secs_f64(
                raw.f64_in(
                    &self.older_than,
                    ("older_than", ""),
                    0.0..=36_500.0,
                    "days",
                    0.0,
                )? * 86_400.0,
            )),
            None => None,
        };
        if max_size.is_none() && older_than.is_none() {
            return Err(ConfigError::Other(
                "shared gc needs a limit: --max-size-gb N, --older-than DAYS, or both".into(),
            ));
        }
        Ok(GcSettings {
            bucket,
            prefix,
            limits: Limits {
                max_size,
                older_than,
            },
            dry_run: self.dry_run,
            s3: self.s3.to_s3_options(&raw)?,
        })
    }
}
