//! The object store seam: everything above this module talks to S3 through the
//! [`ObjectStore`] trait, so the cache and the filesystem never see the AWS SDK and a
//! second cache tier (or an in-memory store in unit tests) can slot in here.

mod breaker;
mod memory;
pub mod metrics;
mod none;
mod s3;

pub use memory::MemoryStore;
pub use metrics::{BucketLabels, StoreMetrics};
pub use none::NoStore;
pub use s3::{S3Options, S3Store};

use std::ops::Range;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

/// Errors of the store layer, small on purpose: callers decide by kind, not by text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The object's ETag is no longer the one asked for (`If-Match` failed).
    #[error("object changed (ETag no longer matches): {0}")]
    PreconditionFailed(String),
    /// 429 / 503 SlowDown after every attempt.
    #[error("throttled by the server: {0}")]
    Throttled(String),
    /// The server answered with a failure (5xx) after every attempt, or a body was cut
    /// off: worth trying again later.
    #[error("{0}")]
    Transient(String),
    /// The server could not be reached or gave no answer in time (connection refused,
    /// DNS, timeouts) after every attempt: it counts as unreachable (see `breaker.rs`).
    #[error("{0}")]
    NoAnswer(String),
    /// Not asked: the server was found unreachable moments ago and is being probed in
    /// the background (see `breaker.rs`). Fails at once instead of waiting again.
    #[error("{0}")]
    Unavailable(String),
    /// No usable credentials (none configured, or a profile that does not resolve).
    #[error("{0}")]
    NoCredentials(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// True for failures that say nothing about the object itself (stale-if-error applies).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Throttled(_)
                | StoreError::Transient(_)
                | StoreError::NoAnswer(_)
                | StoreError::Unavailable(_)
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Whether two ETags name the same version, however a server quotes them.
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// One object as seen by HEAD or LIST.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Quoted as the server sent it, e.g. `"9e107d9d372bb6826bd81d3542a419d6"`. LIST results
    /// from some servers carry none, so it is optional here; HEAD always fills it.
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

/// One page-merged listing: objects directly under the prefix and the common prefixes
/// ("subdirectories") when a delimiter was given.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub objects: Vec<ObjectMeta>,
    pub prefixes: Vec<String>,
}

/// How an object is named in messages and logs: `s3://bucket/key`.
pub fn s3_url(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

pub type ByteStream = Pin<Box<dyn Stream<Item = StoreResult<Bytes>> + Send>>;

/// The answer to a (ranged) GET: the version it came from and the body, streamed.
pub struct GetObject {
    pub etag: String,
    /// Size of the whole object (not of the range).
    pub object_size: u64,
    pub body: ByteStream,
}

impl std::fmt::Debug for GetObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetObject")
            .field("etag", &self.etag)
            .field("object_size", &self.object_size)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// False while the store is known to be unreachable (requests fail at once with
    /// [`StoreError::Unavailable`] until a background probe gets an answer again).
    fn reachable(&self) -> bool {
        true
    }

    async fn list_buckets(&self) -> StoreResult<Vec<String>>;
    /// [`ObjectStore::list_buckets`] whose every page gives up after `within` (see
    /// [`ObjectStore::list_within`]).
    async fn list_buckets_within(&self, within: std::time::Duration) -> StoreResult<Vec<String>> {
        match tokio::time::timeout(within, self.list_buckets()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::NoAnswer(format!(
                "ListBuckets: no answer within {within:?}"
            ))),
        }
    }
    /// Succeeds when the bucket exists and the credentials may use it.
    async fn head_bucket(&self, bucket: &str) -> StoreResult<()>;
    /// Every page of ListObjectsV2 under `prefix`, merged.
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> StoreResult<Listing>;
    /// A LIST whose every page gives up after `within` (a [`StoreError::NoAnswer`]
    /// then): for listing again a directory whose last listing can be served if S3 does
    /// not answer quickly.
    async fn list_within(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        within: std::time::Duration,
    ) -> StoreResult<Listing> {
        match tokio::time::timeout(within, self.list(bucket, prefix, delimiter)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::NoAnswer(format!(
                "s3://{bucket}/{prefix}: no answer within {within:?}"
            ))),
        }
    }
    async fn head(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta>;
    /// A HEAD that gives up after `within` (a transient error then): for checking a
    /// cached copy, which can be served if S3 does not answer quickly.
    async fn head_within(
        &self,
        bucket: &str,
        key: &str,
        within: std::time::Duration,
    ) -> StoreResult<ObjectMeta> {
        match tokio::time::timeout(within, self.head(bucket, key)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::NoAnswer(format!(
                "s3://{bucket}/{key}: no answer within {within:?}"
            ))),
        }
    }
    /// GET of `range` (the whole object when `None`), failing with
    /// [`StoreError::PreconditionFailed`] when `if_match` no longer matches.
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> StoreResult<GetObject>;

    /// GET of a whole object asking the server for its stored checksum, which the SDK
    /// then checks against the body as it ends (the shared cache tier's blocks).
    async fn get_checked(&self, bucket: &str, key: &str) -> StoreResult<GetObject> {
        self.get_range(bucket, key, None, None).await
    }

    /// PUT of a whole object, sent with its SHA-256 for the server to check. With
    /// `Put::IfAbsent` an object already there is left alone: `Ok(false)`.
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        mode: Put,
    ) -> StoreResult<bool> {
        let _ = (body, mode);
        Err(StoreError::Other(format!(
            "{}: this store cannot write",
            s3_url(bucket, key)
        )))
    }

    /// Deletes the objects (a missing one is no error).
    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> StoreResult<()> {
        let _ = keys;
        Err(StoreError::Other(format!(
            "s3://{bucket}: this store cannot delete"
        )))
    }
}

/// How [`ObjectStore::put_object`] treats an object already at the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Replace it.
    Overwrite,
    /// Leave it (`If-None-Match: *`): another writer won, which is fine.
    IfAbsent,
}
