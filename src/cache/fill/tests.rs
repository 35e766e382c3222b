//! Tests of `fill`.

use super::*;

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::store::{GetObject, Listing, MemoryStore, ObjectMeta, StoreResult};

/// A MemoryStore whose GETs misbehave on demand.
#[derive(Default)]
struct Faulty {
    inner: MemoryStore,
    /// The next N bodies end with an error after `cut_after` bytes.
    cut_next: AtomicU64,
    cut_after: AtomicU64,
    /// Every body starts this many bytes after where it was asked to.
    shift: AtomicU64,
    /// Every body arrives in 4 KiB chunks, this many ms apart.
    chunk_delay_ms: AtomicU64,
    gets: AtomicU64,
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn list_buckets(&self) -> StoreResult<Vec<String>> {
        self.inner.list_buckets().await
    }
    async fn head_bucket(&self, b: &str) -> StoreResult<()> {
        self.inner.head_bucket(b).await
    }
    async fn list(&self, b: &str, p: &str, d: Option<&str>) -> StoreResult<Listing> {
        self.inner.list(b, p, d).await
    }
    async fn head(&self, b: &str, k: &str) -> StoreResult<ObjectMeta> {
        self.inner.head(b, k).await
    }
    async fn get_range(
        &self,
        b: &str,
        k: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> StoreResult<GetObject> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let shift = self.shift.load(Ordering::SeqCst);
        let range = range.map(|r| r.start + shift..r.end + shift);
        let got = self.inner.get_range(b, k, range, if_match).await?;
        let mut body: Vec<u8> = Vec::new();
        let mut stream = got.body;
        while let Some(c) = stream.next().await {
            body.extend_from_slice(&c?);
        }
        let cut = self
            .cut_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let keep = if cut {
            (self.cut_after.load(Ordering::SeqCst) as usize).min(body.len())
        } else {
            body.len()
        };
        let delay = self.chunk_delay_ms.load(Ordering::SeqCst);
        let chunks: Vec<StoreResult<Bytes>> = body[..keep]
            .chunks(4096)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .chain(cut.then(|| Err(StoreError::Transient("cut".into()))))
            .collect();
        let stream = futures::stream::iter(chunks).then(move |c| async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            c
        });
        Ok(GetObject {
            etag: got.etag,
            object_size: got.object_size,
            body: Box::pin(stream),
        })
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// A fill of `bkt/obj` into a temp file, in parts of 64 KiB.
fn fill_of(store: Arc<Faulty>, etag: &str, size: u64) -> (Arc<Fill>, tempfile::NamedTempFile) {
    let tmp = tempfile::NamedTempFile::new().expect("temp file");
    let file = tmp.reopen().expect("reopen");
    let ctx = FillCtx {
        metrics: Default::default(),
        store,
        stats: Arc::new(Stats::default()),
    };
    let key = CacheKey::from_url("s3://bkt/obj", "default");
    let fill = Fill::new(
        1,
        key,
        "bkt",
        "obj",
        etag,
        size,
        file,
        "tmp/t".into(),
        64 << 10,
        ctx,
    );
    (Arc::new(fill), tmp)
}

#[tokio::test]
async fn a_cut_body_resumes_from_the_last_byte() {
    let store = Arc::new(Faulty::default());
    let want = data(300_000);
    let etag = store.inner.put("bkt", "obj", want.clone());
    store.cut_after.store(10_000, Ordering::SeqCst);
    store.cut_next.store(3, Ordering::SeqCst);
    let (fill, tmp) = fill_of(store.clone(), &etag, want.len() as u64);
    let sums = fill.run(2, None).await.expect("the fill completes");
    assert_eq!(std::fs::read(tmp.path()).expect("read"), want);
    assert_eq!(sums.crc32, crc32fast::hash(&want));
    // 5 parts, and one more GET for each cut.
    assert_eq!(store.gets.load(Ordering::SeqCst), 5 + 3);
}

#[tokio::test]
async fn bytes_from_the_wrong_place_are_never_kept() {
    let store = Arc::new(Faulty::default());
    let want = data(200_000);
    let etag = store.inner.put("bkt", "obj", want.clone());
    store.shift.store(1, Ordering::SeqCst);
    let (fill, _tmp) = fill_of(store, &etag, want.len() as u64);
    assert!(
        matches!(fill.run(2, None).await, Err(FillFailure::Failed(_))),
        "the MD5 of a plain ETag catches misplaced bytes"
    );
}

#[tokio::test]
async fn a_new_version_mid_fill_abandons_it_as_changed() {
    let store = Arc::new(Faulty::default());
    let want = data(300_000);
    let etag = store.inner.put("bkt", "obj", want.clone());
    store.inner.put("bkt", "obj", data(300_001));
    let (fill, _tmp) = fill_of(store, &etag, want.len() as u64);
    assert_eq!(fill.run(2, None).await.err(), Some(FillFailure::Changed));
    assert_eq!(fill.outcome(), Some(Err(FillFailure::Changed)));
}

#[tokio::test]
async fn a_cancelled_fill_stops_and_lets_go_of_its_file() {
    let store = Arc::new(Faulty::default());
    let want = data(1 << 20);
    let etag = store.inner.put("bkt", "obj", want.clone());
    store.chunk_delay_ms.store(5, Ordering::SeqCst);
    let (fill, _tmp) = fill_of(store, &etag, want.len() as u64);
    let running = tokio::spawn({
        let fill = fill.clone();
        async move { fill.run(2, None).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    fill.finish(Err(FillFailure::Cancelled));
    let ended = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("a cancelled fill ends soon")
        .expect("task");
    assert_eq!(ended.err(), Some(FillFailure::Cancelled));
    assert!(fill.file().is_none(), "its file is closed");
}
