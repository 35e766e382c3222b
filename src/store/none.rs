//! A store for work that must never reach S3 (clearing an unmounted cache): every call
//! fails with a message saying what it was for.

use std::ops::Range;

use async_trait::async_trait;

use super::{GetObject, Listing, ObjectMeta, ObjectStore, StoreError, StoreResult};

#[derive(Debug, Clone)]
pub struct NoStore {
    /// What the caller is doing, for the error: "clearing a cache".
    doing: &'static str,
}

impl NoStore {
    pub fn new(doing: &'static str) -> NoStore {
        NoStore { doing }
    }

    fn refuse<T>(&self) -> StoreResult<T> {
        Err(StoreError::Other(format!("{} does not use S3", self.doing)))
    }
}

#[async_trait]
impl ObjectStore for NoStore {
    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        self.refuse()
    }
    async fn head_bucket(&self, _: &str) -> StoreResult<()> {
        self.refuse()
    }
    async fn list(&self, _: &str, _: &str, _: Option<&str>) -> StoreResult<Listing> {
        self.refuse()
    }
    async fn head(&self, _: &str, _: &str) -> StoreResult<ObjectMeta> {
        self.refuse()
    }
    async fn get_range(
        &self,
        _: &str,
        _: &str,
        _: Option<Range<u64>>,
        _: Option<&str>,
    ) -> StoreResult<GetObject> {
        self.refuse()
    }
}
