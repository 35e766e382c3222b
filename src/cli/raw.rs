//! Raw flag and environment values of one subcommand, checked and turned into settings,
//! with errors that name where each value came from.

use std::ops::RangeInclusive;

use clap::ArgMatches;
use clap::parser::ValueSource;

use crate::config::{self, ConfigError, Origin};

/// Turns the raw values of one subcommand into settings. Errors name the flag, the
/// environment variable or the fstab option the bad value came from, which only the
/// matches (and whether the command line was translated from an fstab line) know.
pub(super) struct Raw<'a> {
    pub(super) m: &'a ArgMatches,
    /// The command line was made from an fstab line's options (see `fstab.rs`).
    pub(super) fstab: bool,
}

impl<'a> Raw<'a> {
    pub(super) fn new(m: &'a ArgMatches) -> Raw<'a> {
        Raw { m, fstab: false }
    }

    pub(super) fn on_command_line(&self, id: &str) -> bool {
        self.m.value_source(id) == Some(ValueSource::CommandLine)
    }

    /// `id` is clap's name for the argument: its long flag with `_` for `-`, which is
    /// also its fstab option.
    pub(super) fn origin(&self, id: &str, env: &str) -> Origin {
        match self.m.value_source(id) {
            Some(ValueSource::EnvVariable) => Origin(env.to_string()),
            // The bucket is the fstab line's first field.
            _ if self.fstab && id == "bucket" => Origin("the fstab device field".into()),
            _ if self.fstab => Origin(id.to_string()),
            _ => Origin(format!("--{}", id.replace('_', "-"))),
        }
    }

    /// A setting as the user wrote it on the command line (or in the fstab options).
    pub(super) fn as_written(&self, id: &str, value: Option<&str>) -> String {
        let name = self.origin(id, "").0;
        match value {
            Some(v) if self.fstab => format!("{name}={v}"),
            Some(v) => format!("{name} {v}"),
            None => name,
        }
    }

    /// A BOOL setting beside the switch that turns it off (`--cache-enabled` and
    /// `--no-cache`). The switch wins over the environment variable; but the two saying
    /// opposite things on one command line is a mistake to point out, not to settle
    /// silently.
    pub(super) fn bool_unless_off(
        &self,
        value: &Option<String>,
        names: (&str, &str),
        off: bool,
        off_id: &str,
    ) -> Result<bool, ConfigError> {
        let on = self.bool(value, names, true)?;
        if off && on && self.on_command_line(names.0) {
            return Err(ConfigError::Conflict(
                self.as_written(off_id, None),
                self.as_written(names.0, value.as_deref()),
            ));
        }
        Ok(on && !off)
    }

    /// `stats` and `clear` work on a mount or on a cache directory: given both, which one
    /// is meant is a guess.
    pub(super) fn mountpoint_or_cache_dir(&self, mountpoint: bool) -> Result<(), ConfigError> {
        if mountpoint && self.on_command_line("cache_dir") {
            return Err(ConfigError::Conflict(
                "MOUNTPOINT".into(),
                self.as_written("cache_dir", None),
            ));
        }
        Ok(())
    }

    /// `value` parsed by `parse` (told where it came from, for its errors), or `default`.
    pub(super) fn or_default<T>(
        &self,
        value: &Option<String>,
        (id, env): (&str, &str),
        default: T,
        parse: impl FnOnce(&Origin, &str) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        match value {
            Some(v) => parse(&self.origin(id, env), v),
            None => Ok(default),
        }
    }

    pub(super) fn u64_in(
        &self,
        value: &Option<String>,
        names: (&str, &str),
        range: RangeInclusive<u64>,
        unit: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        self.or_default(value, names, default, |o, v| {
            config::parse_u64_in(o, v, *range.start(), *range.end(), unit)
        })
    }

    pub(super) fn f64_in(
        &self,
        value: &Option<String>,
        names: (&str, &str),
        range: RangeInclusive<f64>,
        unit: &str,
        default: f64,
    ) -> Result<f64, ConfigError> {
        self.or_default(value, names, default, |o, v| {
            config::parse_f64_in(o, v, *range.start(), *range.end(), unit)
        })
    }

    pub(super) fn bool(
        &self,
        value: &Option<String>,
        names: (&str, &str),
        default: bool,
    ) -> Result<bool, ConfigError> {
        self.or_default(value, names, default, config::parse_bool)
    }

    pub(super) fn mode(
        &self,
        value: &Option<String>,
        names: (&str, &str),
        default: u16,
    ) -> Result<u16, ConfigError> {
        self.or_default(value, names, default, config::parse_mode)
    }
}
