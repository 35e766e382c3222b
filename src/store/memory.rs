//! An in-memory [`ObjectStore`] for unit tests of pure cache logic. Integration tests use
//! a real S3-protocol server instead.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use parking_lot::Mutex;

use super::{GetObject, Listing, ObjectMeta, ObjectStore, Put, StoreError, StoreResult};

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<(String, String), (Bytes, String)>>,
    /// When set, HEAD answers with this error (to test stale-if-error).
    head_error: Mutex<Option<StoreError>>,
    pub heads: AtomicU64,
    pub gets: AtomicU64,
    pub puts: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Stores `data` with an MD5 ETag, as S3 does for single-part uploads.
    pub fn put(&self, bucket: &str, key: &str, data: impl Into<Bytes>) -> String {
        let data = data.into();
        let etag = format!("\"{}\"", hex::encode(Md5::digest(&data)));
        self.objects
            .lock()
            .insert((bucket.into(), key.into()), (data, etag.clone()));
        etag
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.objects.lock().remove(&(bucket.into(), key.into()));
    }

    pub fn fail_heads_with(&self, err: Option<StoreError>) {
        *self.head_error.lock() = err;
    }

    fn lookup(&self, bucket: &str, key: &str) -> StoreResult<(Bytes, String)> {
        self.objects
            .lock()
            .get(&(bucket.into(), key.into()))
            .cloned()
            .ok_or_else(|| StoreError::NotFound(super::s3_url(bucket, key)))
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        let mut names: Vec<String> = self.objects.lock().keys().map(|(b, _)| b.clone()).collect();
        names.dedup();
        Ok(names)
    }

    async fn head_bucket(&self, bucket: &str) -> StoreResult<()> {
        if self.objects.lock().keys().any(|(b, _)| b == bucket) {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("s3://{bucket}")))
        }
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> StoreResult<Listing> {
        let mut out = Listing::default();
        for ((b, k), (data, etag)) in self.objects.lock().iter() {
            let Some(rest) = k.strip_prefix(prefix).filter(|_| b == bucket) else {
                continue;
            };
            if let Some(pos) = delimiter.and_then(|d| rest.find(d).map(|p| p + d.len())) {
                let p = format!("{prefix}{}", &rest[..pos]);
                if out.prefixes.last() != Some(&p) {
                    out.prefixes.push(p);
                }
                continue;
            }
            out.objects.push(ObjectMeta {
                key: k.clone(),
                size: data.len() as u64,
                etag: Some(etag.clone()),
                last_modified: Some(SystemTime::UNIX_EPOCH),
            });
        }
        Ok(out)
    }

    async fn head(&self, bucket: &str, key: &str) -> StoreResult<ObjectMeta> {
        self.heads.fetch_add(1, Ordering::Relaxed);
        if let Some(err) = self.head_error.lock().clone() {
            return Err(err);
        }
        let (data, etag) = self.lookup(bucket, key)?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            etag: Some(etag),
            last_modified: Some(SystemTime::UNIX_EPOCH),
        })
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> StoreResult<GetObject> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let (data, etag) = self.lookup(bucket, key)?;
        if if_match.is_some_and(|m| m != etag) {
            return Err(StoreError::PreconditionFailed(format!(
                "s3://{bucket}/{key}"
            )));
        }
        let object_size = data.len() as u64;
        let r = range.unwrap_or(0..object_size);
        let end = r.end.min(object_size);
        let body = data.slice(r.start.min(end) as usize..end as usize);
        Ok(GetObject {
            etag,
            object_size,
            body: Box::pin(futures::stream::iter([Ok(body)])),
        })
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        mode: Put,
    ) -> StoreResult<bool> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        if mode == Put::IfAbsent && self.lookup(bucket, key).is_ok() {
            return Ok(false);
        }
        self.put(bucket, key, body);
        Ok(true)
    }

    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> StoreResult<()> {
        for k in keys {
            self.delete(bucket, k);
        }
        Ok(())
    }
}
