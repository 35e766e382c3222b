//! A property test of the cache's index against a simple reference model: any sequence
//! of inserts, gets, clock moves, restarts (also with other limits), sweeps and clears
//! leaves exactly the entries, LRU order, sizes, ages and counters the model says, on
//! disk as well as in memory.
//!
//! The model is a list of entries from least to most recently used. An open of a key the
//! model holds, younger than the TTL and with the store's current ETag, is a hit (moved
//! to the most recently used end); anything else is a miss that drops the old entry and,
//! when the object fits the size limit at all, evicts from the least recently used end
//! until both limits hold and adds the new entry, created now. Restarts keep everything
//! (trimming from the least recently used end when the limits shrank).
//!
//! The cache runs over `MemoryStore` with a `ManualClock`. Each open is read whole and
//! followed by `wait_for_downloads`, so the background fill has committed before the next
//! step and the order of events is the model's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use s3cachefs::cache::{Cache, CacheConfig, ManualClock, Outcome};
use s3cachefs::store::MemoryStore;

use crate::common::pattern;

const BUCKET: &str = "bkt";
/// More keys than the largest entry limit, so the entry limit is reached.
const KEYS: usize = 14;
const TTL_MS: u64 = 10_000;
const MAX_ENTRIES: u64 = 10;
const MAX_SIZE: u64 = 4096;

fn object_key(i: usize) -> String {
    format!("dir/obj-{i:02}")
}

#[derive(Debug, Clone)]
enum Op {
    /// Replaces the object in the store with `size` new bytes, then opens it.
    Put { key: usize, size: u64 },
    /// Opens the object as it is in the store.
    Get { key: usize },
    /// Moves the clock on.
    Advance { ms: u64 },
    /// Closes the cache, drops it and opens a new one on the same directory.
    Restart,
    /// A restart with other limits.
    Reconfigure { max_entries: u64, max_size: u64 },
    /// `sweep_expired`.
    Sweep,
    /// `clear`.
    Clear,
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        6 => 1..600u64,
        3 => 600..2000u64,
        // Exactly the size limit, and around it (over it: read directly, not stored).
        1 => Just(MAX_SIZE),
        1 => (MAX_SIZE - 8)..(MAX_SIZE + 200),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..KEYS).prop_map(|key| Op::Get { key }),
        5 => (0..KEYS, size()).prop_map(|(key, size)| Op::Put { key, size }),
        3 => prop_oneof![
            0..4000u64,
            // Steps of a quarter TTL land exactly on the TTL boundary.
            (1..=4u64).prop_map(|n| n * TTL_MS / 4),
        ]
        .prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::Restart),
        1 => (1..=12u64, 512..6000u64)
            .prop_map(|(max_entries, max_size)| Op::Reconfigure { max_entries, max_size }),
        1 => Just(Op::Sweep),
        1 => Just(Op::Clear),
    ]
}

#[derive(Debug, Clone)]
struct ModelEntry {
    key: usize,
    size: u64,
    etag: String,
    created_ms: u64,
}

/// The reference: entries least recently used first, limits, time and the counters a
/// cache instance has seen since it was opened.
#[derive(Debug)]
struct Model {
    entries: Vec<ModelEntry>,
    max_size: u64,
    max_entries: u64,
    now_ms: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
    expirations: u64,
}

impl Model {
    fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    fn position(&self, key: usize) -> Option<usize> {
        self.entries.iter().position(|e| e.key == key)
    }

    fn expired(&self, e: &ModelEntry) -> bool {
        self.now_ms.saturating_sub(e.created_ms) >= TTL_MS
    }

    /// An open of `key` whose current version in the store is `etag`, `size` bytes.
    fn open(&mut self, key: usize, size: u64, etag: &str) -> Outcome {
        if let Some(pos) = self.position(key) {
            if self.expired(&self.entries[pos]) {
                self.expirations += 1;
                self.entries.remove(pos);
            } else if self.entries[pos].etag == etag {
                self.hits += 1;
                let e = self.entries.remove(pos);
                self.entries.push(e);
                return Outcome::Hit;
            } else {
                // Changed in the store: the old copy goes, the new version is a miss.
                self.entries.remove(pos);
            }
        }
        self.misses += 1;
        if size > self.max_size {
            return Outcome::Direct;
        }
        while self.total_size() + size > self.max_size
            || self.entries.len() as u64 >= self.max_entries
        {
            self.entries.remove(0);
            self.evictions += 1;
        }
        self.entries.push(ModelEntry {
            key,
            size,
            etag: etag.to_string(),
            created_ms: self.now_ms,
        });
        Outcome::Miss
    }

    /// A new cache instance: counters start again, and entries over the (maybe new)
    /// limits go, least recently used first.
    fn restart(&mut self, max_entries: u64, max_size: u64) {
        self.max_entries = max_entries;
        self.max_size = max_size;
        self.hits = 0;
        self.misses = 0;
        self.evictions = 0;
        self.expirations = 0;
        while self.total_size() > self.max_size || self.entries.len() as u64 > self.max_entries {
            self.entries.remove(0);
            self.evictions += 1;
        }
    }

    fn sweep(&mut self) -> usize {
        let before = self.entries.len();
        let now = self.now_ms;
        self.entries
            .retain(|e| now.saturating_sub(e.created_ms) < TTL_MS);
        let n = before - self.entries.len();
        self.expirations += n as u64;
        n
    }
}

/// The objects in the store: bytes and ETag of each key's current version.
struct Objects {
    store: Arc<MemoryStore>,
    current: Vec<(Vec<u8>, String)>,
    next_version: u64,
}

impl Objects {
    fn put(&mut self, key: usize, size: u64) {
        // Every version's bytes differ (except the empty ones, which share an ETag).
        let data = pattern(self.next_version * 1000 + key as u64 + 1, size as usize);
        self.next_version += 1;
        let etag = self.store.put(BUCKET, &object_key(key), data.clone());
        self.current[key] = (data, etag);
    }
}

fn config(dir: &Path, max_entries: u64, max_size: u64) -> CacheConfig {
    CacheConfig {
        max_size,
        max_entries,
        ttl: Duration::from_millis(TTL_MS),
        // Never during a case: expiry happens on use and by the explicit Sweep step.
        sweep_interval: Duration::from_secs(3600),
        read_timeout: Duration::from_secs(10),
        ..CacheConfig::at(dir)
    }
}

/// Opens the cache, retrying briefly: the previous instance's last download task may
/// still hold it (and so the directory lock) for a moment after `wait_for_downloads`.
async fn open_cache(
    dir: &Path,
    max_entries: u64,
    max_size: u64,
    store: &Arc<MemoryStore>,
    clock: &Arc<ManualClock>,
) -> Result<Cache, TestCaseError> {
    let mut last = None;
    for _ in 0..200 {
        match Cache::open(
            config(dir, max_entries, max_size),
            store.clone(),
            clock.clone(),
        ) {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(TestCaseError::fail(format!(
        "could not reopen the cache: {last:?}"
    )))
}

/// Compares the cache with the model: LRU order, sizes, counts, counters, persisted rows
/// and the files on disk.
fn check(cache: &Cache, model: &Model, dir: &Path, step: &str) -> Result<(), TestCaseError> {
    let want: Vec<_> = model
        .entries
        .iter()
        .map(|e| cache.key_of(BUCKET, &object_key(e.key)))
        .collect();
    let got = cache.keys_lru_first();
    if got != want {
        let name = |k: &s3cachefs::cache::CacheKey| {
            (0..KEYS)
                .find(|&i| cache.key_of(BUCKET, &object_key(i)) == *k)
                .map_or_else(|| format!("{k:?}"), |i| i.to_string())
        };
        return Err(TestCaseError::fail(format!(
            "after {step}: LRU order (keys, least recently used first): cache {:?}, model {:?}",
            got.iter().map(name).collect::<Vec<_>>(),
            model.entries.iter().map(|e| e.key).collect::<Vec<_>>(),
        )));
    }
    let s = cache.stats();
    prop_assert_eq!(
        s.entry_count,
        model.entries.len() as u64,
        "entry_count after {}",
        step
    );
    prop_assert_eq!(
        s.total_size,
        model.total_size(),
        "total_size after {}",
        step
    );
    prop_assert!(s.total_size <= model.max_size, "size limit after {}", step);
    prop_assert!(
        s.entry_count <= model.max_entries,
        "entry limit after {}",
        step
    );
    prop_assert_eq!(
        (s.hits, s.misses, s.evictions, s.expirations),
        (model.hits, model.misses, model.evictions, model.expirations),
        "(hits, misses, evictions, expirations) after {}",
        step
    );
    prop_assert_eq!(
        s.downloads_in_flight,
        0,
        "downloads in flight after {}",
        step
    );
    for e in &model.entries {
        let name = object_key(e.key);
        let row = cache
            .entry_row(BUCKET, &name)
            .ok_or_else(|| TestCaseError::fail(format!("after {step}: no row for {name}")))?;
        prop_assert_eq!(
            (&row.etag, row.size, row.created_ms),
            (&e.etag, e.size, e.created_ms),
            "row of {} after {}",
            name,
            step
        );
        let path = cache.entry_path(BUCKET, &name).expect("cache enabled");
        let len = std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|err| TestCaseError::fail(format!("after {step}: file of {name}: {err}")))?;
        prop_assert_eq!(len, e.size, "file size of {} after {}", name, step);
    }
    // Nothing else on disk: evicted and replaced files are gone, no temporary is left.
    let mut files = 0usize;
    for shard in 0..=255u8 {
        if let Ok(items) = std::fs::read_dir(dir.join(hex::encode([shard]))) {
            files += items.count();
        }
    }
    prop_assert_eq!(
        files,
        model.entries.len(),
        "files in the shards after {}",
        step
    );
    let tmp = std::fs::read_dir(dir.join("tmp")).map_or(0, |d| d.count());
    prop_assert_eq!(tmp, 0, "files left in tmp/ after {}", step);
    Ok(())
}

async fn run(initial: Vec<u64>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    // On tmpfs when there is one: the index commits durably (fsync) on every insert.
    let tmp = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let dir = tmp.path().join("cache");
    let store = Arc::new(MemoryStore::new());
    let mut objects = Objects {
        store: store.clone(),
        current: vec![(Vec::new(), String::new()); KEYS],
        next_version: 0,
    };
    for (key, size) in initial.into_iter().enumerate() {
        objects.put(key, size);
    }
    let clock = ManualClock::new(1_700_000_000_000);
    let mut model = Model {
        entries: Vec::new(),
        max_size: MAX_SIZE,
        max_entries: MAX_ENTRIES,
        now_ms: 1_700_000_000_000,
        hits: 0,
        misses: 0,
        evictions: 0,
        expirations: 0,
    };
    let mut cache = open_cache(&dir, MAX_ENTRIES, MAX_SIZE, &store, &clock).await?;
    for (i, op) in ops.iter().enumerate() {
        let step = format!("step {i} {op:?}");
        match *op {
            Op::Put { key, .. } | Op::Get { key } => {
                if let Op::Put { size, .. } = *op {
                    objects.put(key, size);
                }
                let (data, etag) = objects.current[key].clone();
                let want = model.open(key, data.len() as u64, &etag);
                let h = cache
                    .open_object(BUCKET, &object_key(key), None)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{step}: open: {e}")))?;
                prop_assert_eq!(h.outcome, want, "outcome of {}", step);
                prop_assert_eq!(&h.etag, &etag, "etag of the handle of {}", step);
                let got = h
                    .read(0, data.len() + 1)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{step}: read: {e}")))?;
                prop_assert!(got.as_ref() == data.as_slice(), "bytes read in {}", step);
                drop(h);
                cache.wait_for_downloads().await;
            }
            Op::Advance { ms } => {
                clock.advance_ms(ms);
                model.now_ms += ms;
            }
            Op::Restart | Op::Reconfigure { .. } => {
                let (max_entries, max_size) = match *op {
                    Op::Reconfigure {
                        max_entries,
                        max_size,
                    } => (max_entries, max_size),
                    _ => (model.max_entries, model.max_size),
                };
                cache
                    .close()
                    .map_err(|e| TestCaseError::fail(format!("{step}: close: {e}")))?;
                drop(cache);
                cache = open_cache(&dir, max_entries, max_size, &store, &clock).await?;
                model.restart(max_entries, max_size);
            }
            Op::Sweep => {
                let want = model.sweep();
                prop_assert_eq!(cache.sweep_expired(), want, "entries swept in {}", step);
            }
            Op::Clear => {
                let want = model.entries.len();
                model.entries.clear();
                prop_assert_eq!(cache.clear().0, want, "entries cleared in {}", step);
            }
        }
        check(&cache, &model, &dir, &step)?;
    }
    cache
        .close()
        .map_err(|e| TestCaseError::fail(format!("final close: {e}")))?;
    Ok(())
}

/// 32 cases by default (about 10 s in a debug build, most of it redb's durable commits);
/// `PROPTEST_CASES=N` runs more.
fn proptest_config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn index_matches_model(
        initial in proptest::collection::vec(size(), KEYS),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run(initial, ops))?;
    }
}
