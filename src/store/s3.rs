//! [`ObjectStore`] over the AWS SDK: with `s3/errors.rs`, the only code that imports `aws-*`.
//!
//! Retries are ours, not the SDK's: each request is tried up to `max_attempts` times with
//! capped exponential backoff and jitter, all within `request_timeout` whatever the retry
//! settings, and a request that gets no answer at all marks the endpoint unreachable (see
//! `breaker.rs`) so the next ones fail at once instead of waiting again.

use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Weak};
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
use aws_sdk_s3::types::{ChecksumMode, EncodingType};
use aws_smithy_types::date_time::DateTime as SmithyDateTime;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::debug;

use super::breaker::{Breaker, PROBE_INTERVAL, PROBE_TIMEOUT};
use super::metrics::{Op, StoreMetrics};
use super::{GetObject, Listing, ObjectMeta, ObjectStore, Put, StoreError, StoreResult, s3_url};
use errors::map_err;

/// How to reach the store. Everything optional falls back to the SDK's normal chain
/// (environment, `~/.aws/config`, instance metadata).
#[derive(Debug, Clone)]
pub struct S3Options {
    pub profile: Option<String>,
    pub region: Option<String>,
    /// For S3-compatible servers (MinIO, Ceph, a local test server).
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// Attempts per request, including the first, with capped exponential backoff and
    /// jitter between them.
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// Time allowed for one attempt up to the response headers.
    pub attempt_timeout: Duration,
    /// Longest one request may take, all its attempts and backoff included (for a GET:
    /// up to its response headers; the body is read by the caller, under its own deadline).
    pub request_timeout: Duration,
    /// Fixed (access key, secret key), bypassing the environment and profile files
    /// entirely. For tests and embedding; the command line never sets it.
    pub static_credentials: Option<(String, String)>,
    /// This is the shared cache tier's store, not the origin: its being unreachable is
    /// reported by the tier (in origin words it would say the wrong thing).
    pub shared_tier: bool,
    /// Where request latencies, retries and throttles are recorded (`/metrics`).
    pub metrics: StoreMetrics,
}

impl S3Options {
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            profile: None,
            region: None,
            endpoint_url: None,
            force_path_style: false,
            max_attempts: S3Options::DEFAULT_MAX_ATTEMPTS,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(10),
            request_timeout: S3Options::DEFAULT_REQUEST_TIMEOUT,
            static_credentials: None,
            shared_tier: false,
            metrics: StoreMetrics::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    max_attempts: u32,
    request_timeout: Duration,
    breaker: Arc<Breaker>,
    /// A bucket requests went to, for the probe to ask about (any answer will do).
    probe_bucket: Arc<Mutex<Option<String>>>,
    metrics: StoreMetrics,
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
            // Retries are ours (`call`): bounded by one deadline, and seen by the breaker.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(opts.connect_timeout.min(opts.request_timeout))
                    .operation_attempt_timeout(opts.attempt_timeout.min(opts.request_timeout))
                    .build(),
            )
            .build();
        let endpoint = match &opts.endpoint_url {
            Some(u) => u.clone(),
            None => "AWS S3".to_string(),
        };
        S3Store {
            client: Client::from_conf(conf),
            max_attempts: opts.max_attempts.max(1),
            request_timeout: opts.request_timeout,
            breaker: Arc::new(if opts.shared_tier {
                Breaker::quiet(&endpoint)
            } else {
                Breaker::new(&endpoint)
            }),
            probe_bucket: Arc::new(Mutex::new(None)),
            metrics: opts.metrics.clone(),
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

    /// Runs one request: up to `max_attempts` attempts within `request_timeout`, retrying
    /// throttling and network or server failures with backoff. A request that ends without
    /// any answer marks the endpoint unreachable; any answer marks it reachable.
    async fn call<T, F, Fut>(
        &self,
        op: Op,
        what: &str,
        bucket: Option<&str>,
        attempt: F,
    ) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        self.call_within(op, what, bucket, self.request_timeout, attempt)
            .await
    }

    /// [`S3Store::call`] with its own time limit.
    async fn call_within<T, F, Fut>(
        &self,
        op: Op,
        what: &str,
        bucket: Option<&str>,
        within: Duration,
        mut attempt: F,
    ) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        if let Some(b) = bucket {
            let mut pb = self.probe_bucket.lock();
            if pb.as_deref() != Some(b) {
                *pb = Some(b.to_string());
            }
        }
        if self.breaker.is_open() {
            return Err(StoreError::Unavailable(self.breaker.refusal(what)));
        }
        let deadline = Instant::now() + within;
        let mut n = 0;
        loop {
            n += 1;
            let sent = std::time::Instant::now();
            let answer = match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::NoAnswer(format!(
                    "{what}: no answer from {} within {:.1}s",
                    self.breaker.endpoint(),
                    within.as_secs_f64()
                ))),
            };
            let took = sent.elapsed();
            let result = answer.as_ref().map(|_| ());
            self.metrics.attempt(op, bucket, took, result);
            let err = match answer {
                Ok(v) => {
                    self.breaker.answered();
                    return Ok(v);
                }
                Err(e) if !e.is_transient() => {
                    if !matches!(e, StoreError::NoCredentials(_)) {
                        self.breaker.answered();
                    }
                    return Err(e);
                }
                Err(e) => e,
            };
            let pause = backoff(n, matches!(err, StoreError::Throttled(_)));
            if n >= self.max_attempts || Instant::now() + pause >= deadline {
                if let StoreError::NoAnswer(why) = &err {
                    if self.breaker.unreachable(why) {
                        self.start_probe();
                    }
                } else {
                    // Throttled or failing: the server answered.
                    self.breaker.answered();
                }
                return Err(err);
            }
            debug!(%what, attempt = n, error = %err, "retrying");
            self.metrics.retry(op, bucket);
            tokio::time::sleep(pause).await;
        }
    }

    /// Asks the endpoint every [`PROBE_INTERVAL`] until it answers, then closes the
    /// breaker. Stops when the store is dropped.
    fn start_probe(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let bucket = self.probe_bucket.lock().clone();
        let breaker: Weak<Breaker> = Arc::downgrade(&self.breaker);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(b) = breaker.upgrade() else { return };
                if !b.is_open() {
                    return;
                }
                let asked = async {
                    match &bucket {
                        Some(bucket) => client
                            .head_bucket()
                            .bucket(bucket)
                            .send()
                            .await
                            .map(|_| ())
                            .map_err(|e| map_err(e, "probe")),
                        None => client
                            .list_buckets()
                            .send()
                            .await
                            .map(|_| ())
                            .map_err(|e| map_err(e, "probe")),
                    }
                };
                match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
                    Ok(Err(StoreError::NoAnswer(why))) => debug!(%why, "probe: still unreachable"),
                    Ok(_) => {
                        b.answered();
                        return;
                    }
                    Err(_) => debug!("probe: no answer"),
                }
            }
        });
    }
}

/// Capped exponential backoff with full jitter; throttling backs off longer.
fn backoff(attempt: u32, throttled: bool) -> Duration {
    let base_ms: u64 = if throttled { 500 } else { 100 };
    let cap = (base_ms << attempt.min(6)).min(5_000);
    Duration::from_millis(cap / 2 + rand::random::<u64>() % (cap / 2 + 1))
}

fn to_system_time(t: Option<&SmithyDateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

/// Keys and prefixes of a page asked for with `encoding-type=url`, as S3 sends them:
/// percent-encoded, with `+` for a space. A server that says so but did not encode (a
/// raw space, control or non-ASCII character gives it away) is read as it is.
fn decode_page(names: &mut [&mut String], encoded: bool) {
    let really = encoded
        && names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_graphic()));
    if !really {
        return;
    }
    for n in names.iter_mut() {
        let plus_as_space = n.replace('+', " ");
        match percent_encoding::percent_decode_str(&plus_as_space).decode_utf8() {
            Ok(d) => **n = d.into_owned(),
            Err(_) => {
                debug!(name = %n, "listing: a key that does not decode to UTF-8 is kept as sent")
            }
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn reachable(&self) -> bool {
        !self.breaker.is_open()
    }

    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        self.list_buckets_within(self.request_timeout).await
    }

    async fn list_buckets_within(&self, within: Duration) -> StoreResult<Vec<String>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call_within(Op::List, "ListBuckets", None, within, || async {
                    self.client
                        .list_buckets()
                        .set_continuation_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| map_err(e, "ListBuckets"))
                })
                .await?;
            names.extend(
                page.buckets()
                    .iter()
                    .filter_map(|b| b.name().map(str::to_string)),
            );
            token = page.continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(names);
            }
        }
    }

    async fn head_bucket(&self, bucket: &str) -> StoreResult<()> {
        let target = format!("s3://{bucket}");
        self.call(Op::Head, &target, Some(bucket), || async {
            self.client
                .head_bucket()
                .bucket(bucket)
                .send()
                .await
                .map_err(|e| map_err(e, &target))
        })
        .await?;
        Ok(())
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> StoreResult<Listing> {
        self.list_within(bucket, prefix, delimiter, self.request_timeout)
            .await
    }

    async fn list_within(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        within: Duration,
    ) -> StoreResult<Listing> {
        let target = s3_url(bucket, prefix);
        let mut out = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call_within(Op::List, &target, Some(bucket), within, || async {
                    let mut req = self
                        .client
                        .list_objects_v2()
                        .bucket(bucket)
                        // Keys are sent percent-encoded: a key with a character XML 1.0
                        // cannot carry (\x01, ESC) would otherwise break the whole page.
                        .encoding_type(EncodingType::Url)
                        .set_continuation_token(token.clone());
                    if !prefix.is_empty() {
                        req = req.prefix(prefix);
                    }
                    if let Some(d) = delimiter {
                        req = req.delimiter(d);
                    }
                    req.send().await.map_err(|e| map_err(e, &target))
                })
                .await?;
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            let mut objects: Vec<ObjectMeta> = page
                .contents()
                .iter()
                .filter_map(|obj| {
                    Some(ObjectMeta {
                        key: obj.key()?.to_string(),
                        size: obj.size().unwrap_or(0).max(0) as u64,
                        etag: obj.e_tag().filter(|e| !e.is_empty()).map(str::to_string),
                        last_modified: to_system_time(obj.last_modified()),
                    })
                })
                .collect();
            let mut prefixes: Vec<String> = page
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string))
                .collect();
            {
                let mut names: Vec<&mut String> = objects
                    .iter_mut()
                    .map(|o| &mut o.key)
                    .chain(prefixes.iter_mut())
                    .collect();
                decode_page(&mut names, encoded);
            }
            out.objects.extend(objects);
            out.prefixes.extend(prefixes);
            token = page
                .next_continuation_token()
                .filter(|_| page.is_truncated() == Some(true))
                .map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn head(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta> {
        self.head_within(bucket, key, self.request_timeout).await
    }

    async fn head_within(
        &self,
        bucket: &str,
        key: &str,
        within: Duration,
    ) -> StoreResult<ObjectMeta> {
        let target = s3_url(bucket, key);
        let out = self
            .call_within(Op::Head, &target, Some(bucket), within, || async {
                self.client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| map_err(e, &target))
            })
            .await?;
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
        self.get(bucket, key, range, if_match, false).await
    }

    async fn get_checked(&self, bucket: &str, key: &str) -> StoreResult<GetObject> {
        self.get(bucket, key, None, None, true).await
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        mode: Put,
    ) -> StoreResult<bool> {
        self.put(bucket, key, body, mode).await
    }

    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> StoreResult<()> {
        self.delete(bucket, keys).await
    }
}

impl S3Store {
    /// A (ranged) GET; `checked` asks for the object's stored checksum, which the SDK
    /// then verifies as the body ends.
    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
        checked: bool,
    ) -> StoreResult<GetObject> {
        let target = s3_url(bucket, key);
        if let Some(r) = &range
            && r.start >= r.end
        {
            return Err(StoreError::Other(format!("{target}: empty range {r:?}")));
        }
        let out = self
            .call(Op::Get, &target, Some(bucket), || async {
                let mut req = self.client.get_object().bucket(bucket).key(key);
                if let Some(r) = &range {
                    req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
                }
                if let Some(etag) = if_match {
                    req = req.if_match(etag);
                }
                if checked {
                    req = req.checksum_mode(ChecksumMode::Enabled);
                }
                req.send().await.map_err(|e| map_err(e, &target))
            })
            .await?;
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

mod errors;
mod write;

#[cfg(test)]
mod tests;
