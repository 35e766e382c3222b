//! [`ObjectStore`] over the AWS SDK: the only file that imports `aws-*`.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_smithy_types::date_time::DateTime as SmithyDateTime;

use super::{GetObject, Listing, ObjectMeta, ObjectStore, StoreError, StoreResult};

/// How to reach the store. Everything optional falls back to the SDK's normal chain
/// (environment, `~/.aws/config`, instance metadata).
#[derive(Debug, Clone)]
pub struct S3Options {
    pub profile: Option<String>,
    pub region: Option<String>,
    /// For S3-compatible servers (MinIO, Ceph, a local test server).
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// Attempts per request, including the first (the SDK backs off between them with
    /// capped exponential delays and jitter).
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// Time allowed for one attempt up to the response headers.
    pub attempt_timeout: Duration,
    /// Fixed (access key, secret key), bypassing the environment and profile files
    /// entirely. For tests and embedding; the command line never sets it.
    pub static_credentials: Option<(String, String)>,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            profile: None,
            region: None,
            endpoint_url: None,
            force_path_style: false,
            max_attempts: 5,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
            static_credentials: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
}

impl S3Store {
    pub async fn new(opts: &S3Options) -> S3Store {
        let builder = match &opts.static_credentials {
            Some((ak, sk)) => {
                // Nothing from the caller's environment: no profile, no metadata service.
                let mut b = aws_sdk_s3::config::Builder::new()
                    .behavior_version(BehaviorVersion::latest())
                    .credentials_provider(Credentials::new(ak, sk, None, None, "static"))
                    .region(Region::new(
                        opts.region.clone().unwrap_or_else(|| "us-east-1".into()),
                    ));
                if let Some(url) = &opts.endpoint_url {
                    b = b.endpoint_url(url);
                }
                b
            }
            None => aws_sdk_s3::config::Builder::from(&Self::load_shared(opts).await),
        };
        let conf = builder
            .force_path_style(opts.force_path_style)
            // Non-AWS servers reject or mangle the newer default checksums; we verify
            // bodies ourselves (size, MD5 ETag, our own checksum).
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(opts.max_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(opts.connect_timeout)
                    .operation_attempt_timeout(opts.attempt_timeout)
                    .build(),
            )
            .build();
        S3Store {
            client: Client::from_conf(conf),
        }
    }

    /// The SDK's normal chain: environment, profile files, SSO, instance metadata.
    async fn load_shared(opts: &S3Options) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(profile) = &opts.profile {
            loader = loader.profile_name(profile);
        }
        let region = RegionProviderChain::first_try(opts.region.clone().map(Region::new))
            .or_default_provider()
            // S3-compatible servers rarely care, but the SDK refuses to sign without one.
            .or_else(Region::new("us-east-1"));
        loader = loader.region(region);
        if let Some(url) = &opts.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        loader.load().await
    }
}

fn what(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

/// One place that turns SDK errors into the store's small enum. The text never carries
/// request headers, so no credentials or signatures reach the logs.
fn map_err<E, R>(err: SdkError<E, R>, target: &str) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let status = err.raw_response().map(|r| r.status_code());
    let msg = format!("{target}: {}", DisplayErrorContext(&err));
    match (&err, status) {
        (_, Some(404)) => StoreError::NotFound(target.to_string()),
        (_, Some(403)) => StoreError::AccessDenied(msg),
        (_, Some(412)) => StoreError::PreconditionFailed(target.to_string()),
        (_, Some(429)) | (_, Some(503)) => StoreError::Throttled(msg),
        (_, Some(s)) if s >= 500 => StoreError::Transient(msg),
        (SdkError::TimeoutError(_), _)
        | (SdkError::DispatchFailure(_), _)
        | (SdkError::ResponseError(_), _) => StoreError::Transient(msg),
        _ => StoreError::Other(msg),
    }
}

trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn to_system_time(t: Option<&SmithyDateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        let mut names = Vec::new();
        let mut pages = self.client.list_buckets().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err(e, "ListBuckets"))?;
            names.extend(
                page.buckets()
                    .iter()
                    .filter_map(|b| b.name().map(str::to_string)),
            );
        }
        Ok(names)
    }

    async fn head_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| map_err(e, &format!("s3://{bucket}")))?;
        Ok(())
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> StoreResult<Listing> {
        let target = what(bucket, prefix);
        let mut req = self.client.list_objects_v2().bucket(bucket);
        if !prefix.is_empty() {
            req = req.prefix(prefix);
        }
        if let Some(d) = delimiter {
            req = req.delimiter(d);
        }
        let mut out = Listing::default();
        let mut pages = req.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err(e, &target))?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                out.objects.push(ObjectMeta {
                    key: key.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    etag: obj.e_tag().filter(|e| !e.is_empty()).map(str::to_string),
                    last_modified: to_system_time(obj.last_modified()),
                });
            }
            for p in page.common_prefixes() {
                if let Some(p) = p.prefix() {
                    out.prefixes.push(p.to_string());
                }
            }
        }
        Ok(out)
    }

    async fn head(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta> {
        let target = what(bucket, key);
        let out = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_err(e, &target))?;
        let etag = out
            .e_tag()
            .filter(|e| !e.is_empty())
            .ok_or_else(|| StoreError::Other(format!("{target}: HEAD returned no ETag")))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: Some(etag.to_string()),
            last_modified: to_system_time(out.last_modified()),
        })
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> StoreResult<GetObject> {
        let target = what(bucket, key);
        let mut req = self.client.get_object().bucket(bucket).key(key);
        if let Some(r) = &range {
            if r.start >= r.end {
                return Err(StoreError::Other(format!("{target}: empty range {r:?}")));
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        if let Some(etag) = if_match {
            req = req.if_match(etag);
        }
        let out = req.send().await.map_err(|e| map_err(e, &target))?;
        let etag = out.e_tag().unwrap_or_default().to_string();
        // Some S3-compatible servers ignore If-Match (or check it apart from the read):
        // an answer carrying another version is what a 412 would have said.
        if let Some(want) = if_match
            && !etag.is_empty()
            && !super::same_etag(&etag, want)
        {
            return Err(StoreError::PreconditionFailed(format!(
                "{target}: the server answered version {etag}, not {want}"
            )));
        }
        let length = out.content_length().unwrap_or(0).max(0) as u64;
        // Callers write and serve the body at the offset they asked for: an answer from
        // anywhere else would put bytes in the wrong place.
        let object_size = match (out.content_range().map(parse_content_range), &range) {
            (Some(Some(cr)), Some(r)) if cr.start != r.start => {
                return Err(StoreError::Other(format!(
                    "{target}: asked for bytes from {}, the server answered from {}",
                    r.start, cr.start
                )));
            }
            (Some(Some(ContentRange { total: Some(t), .. })), _) => t,
            // "bytes 0-99/*": the object's size only a HEAD can tell, if of this version.
            (Some(Some(_)), _) => {
                let meta = self.head(bucket, key).await?;
                if !meta.etag.is_some_and(|e| super::same_etag(&e, &etag)) {
                    return Err(StoreError::PreconditionFailed(format!(
                        "{target}: replaced while its size was asked for"
                    )));
                }
                meta.size
            }
            (Some(None), _) => {
                return Err(StoreError::Other(format!(
                    "{target}: unreadable Content-Range {:?}",
                    out.content_range().unwrap_or_default()
                )));
            }
            (None, Some(r)) if r.start > 0 => {
                return Err(StoreError::Other(format!(
                    "{target}: the server ignored the Range header (asked for bytes from {})",
                    r.start
                )));
            }
            // The whole object (asked for, or a range from 0 answered whole).
            (None, _) => length,
        };
        let body = out.body;
        let stream = futures::stream::try_unfold((body, target), |(mut body, target)| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, (body, target)))),
                Ok(None) => Ok(None),
                Err(e) => Err(StoreError::Transient(format!("{target}: body: {e}"))),
            }
        });
        Ok(GetObject {
            etag,
            object_size,
            body: Box::pin(stream),
        })
    }
}

/// A `Content-Range` of a 206 answer: `bytes START-END/TOTAL`, TOTAL perhaps `*`.
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    end: u64,
    total: Option<u64>,
}

fn parse_content_range(s: &str) -> Option<ContentRange> {
    let (range, total) = s.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end).then_some(ContentRange { start, end, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        let cr = |start, end, total| Some(ContentRange { start, end, total });
        assert_eq!(
            parse_content_range("bytes 0-99/1234"),
            cr(0, 99, Some(1234))
        );
        assert_eq!(parse_content_range("bytes 100-199/*"), cr(100, 199, None));
        assert_eq!(parse_content_range("bytes */1234"), None);
        assert_eq!(parse_content_range("bytes 9-1/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes 0-x/2"), None);
    }
}
