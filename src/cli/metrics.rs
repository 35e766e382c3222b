//! The metrics flags of `mount`: where `/metrics` is served, whether it may be reached
//! from other machines, and the labels every series carries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::Args;
use clap::builder::BoolishValueParser;

use super::raw::Raw;
use crate::config::{ConfigError, Origin};
use crate::metrics::{MetricsOptions, RESERVED_LABELS};

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: a free port, shown in
    /// the log and in .cache-stats as metrics_addr) [default: off]
    #[arg(long, env = "S3CACHEFS_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Let --metrics-addr be an address other machines can reach (it has no
    /// authentication; without this only loopback addresses are taken)
    #[arg(long, env = "S3CACHEFS_METRICS_ALLOW_REMOTE", value_parser = BoolishValueParser::new())]
    pub metrics_allow_remote: bool,
    /// A label on every metric, to tell mounts and hosts apart; repeat for more (the
    /// variable takes them comma-separated)
    #[arg(
        long,
        env = "S3CACHEFS_METRICS_LABEL",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub metrics_label: Vec<String>,
}

impl MetricsArgs {
    pub(super) fn to_options(&self, raw: &Raw) -> Result<MetricsOptions, ConfigError> {
        let addr = match self.metrics_addr.as_deref().filter(|a| !a.is_empty()) {
            None => None,
            Some(a) => {
                let origin = raw.origin("metrics_addr", "S3CACHEFS_METRICS_ADDR");
                let addr = parse_addr(&origin, a)?;
                if !addr.ip().is_loopback() && !self.metrics_allow_remote {
                    return Err(ConfigError::Invalid {
                        setting: origin.0,
                        value: a.to_string(),
                        expected: format!(
                            "a loopback address such as 127.0.0.1:9100: /metrics has no \
                             authentication, so other addresses need {}",
                            raw.as_written("metrics_allow_remote", None)
                        ),
                    });
                }
                Some(addr)
            }
        };
        let origin = raw.origin("metrics_label", "S3CACHEFS_METRICS_LABEL");
        let mut labels: Vec<(String, String)> = Vec::new();
        for l in self.metrics_label.iter().filter(|l| !l.is_empty()) {
            let (k, v) = parse_label(&origin, l)?;
            if labels.iter().any(|(have, _)| *have == k) {
                return Err(ConfigError::Invalid {
                    setting: origin.0,
                    value: l.clone(),
                    expected: format!("each label once: {k} is given twice"),
                });
            }
            labels.push((k, v));
        }
        Ok(MetricsOptions { addr, labels })
    }
}

/// `127.0.0.1:9100`, `[::1]:9100` or `localhost:9100`.
fn parse_addr(origin: &Origin, value: &str) -> Result<SocketAddr, ConfigError> {
    let v = value.trim();
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(("localhost", port)) = v.rsplit_once(':')
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    Err(ConfigError::Invalid {
        setting: origin.0.clone(),
        value: value.to_string(),
        expected: "HOST:PORT with an IP address (or localhost), e.g. 127.0.0.1:9100; \
                   port 0 picks a free port"
            .into(),
    })
}

/// `key=value`: a Prometheus label name that s3cachefs does not set itself, and a value.
fn parse_label(origin: &Origin, value: &str) -> Result<(String, String), ConfigError> {
    let bad = |why: &str| ConfigError::Invalid {
        setting: origin.0.clone(),
        value: value.to_string(),
        expected: format!("KEY=VALUE, {why}"),
    };
    let (k, v) = value
        .split_once('=')
        .ok_or_else(|| bad("e.g. host=web-1"))?;
    let (k, v) = (k.trim(), v.trim());
    let name_ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !k.starts_with("__");
    if !name_ok {
        return Err(bad(
            "KEY made of letters, digits and _ (not first a digit, not starting __)",
        ));
    }
    if RESERVED_LABELS.contains(&k) {
        return Err(bad(&format!(
            "KEY other than the labels s3cachefs sets: {}",
            RESERVED_LABELS.join(", ")
        )));
    }
    if v.is_empty() {
        return Err(bad("VALUE not empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o() -> Origin {
        Origin("--metrics-label".into())
    }

    #[test]
    fn addresses() {
        let a = |s| parse_addr(&Origin("--metrics-addr".into()), s);
        assert_eq!(a("127.0.0.1:0").expect("v4").port(), 0);
        assert!(a("[::1]:9100").expect("v6").ip().is_loopback());
        assert!(a("localhost:9100").expect("localhost").ip().is_loopback());
        for bad in [
            "9100",
            "example.com:9100",
            "127.0.0.1",
            "127.0.0.1:99999",
            "",
        ] {
            let e = a(bad).expect_err(bad);
            assert!(e.to_string().contains("--metrics-addr"), "{e}");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(
            parse_label(&o(), "host=web-1").expect("ok"),
            ("host".into(), "web-1".into())
        );
        assert_eq!(
            parse_label(&o(), "url=a=b").expect("= in the value").1,
            "a=b"
        );
        for bad in [
            "host", "=x", "1host=x", "ho-st=x", "__x=y", "bucket=b", "k=",
        ] {
            let e = parse_label(&o(), bad).expect_err(bad);
            assert!(e.to_string().contains("--metrics-label"), "{e}");
        }
    }
}
