//! How long opening a cache with a large index takes, and how much memory each index
//! entry costs. Not a test: run it and read the figures.
//!
//!     cargo run --release --example index_bench [-- ENTRIES]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use s3cachefs::cache::db::{Batch, EntryRow, IndexDb};
use s3cachefs::cache::{Cache, CacheConfig, CacheKey, Index, SystemClock};
use s3cachefs::store::MemoryStore;

/// Counts bytes currently allocated, so memory per entry is measured, not guessed.
struct Counting;

static IN_USE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        IN_USE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        IN_USE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("cache");
    std::fs::create_dir_all(&cache_dir).expect("mkdir");
    let db_path = cache_dir.join("index.redb");

    let t = Instant::now();
    {
        let (db, _) = IndexDb::open(&db_path).expect("open");
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let mut b = Batch::default();
            for &i in chunk {
                let url = format!("s3://bench-bucket/some/prefix/object-{i:08}.bin");
                let k = CacheKey::from_url(&url, "default");
                let row = EntryRow {
                    url,
                    profile: "default".into(),
                    etag: format!("\"{:032x}\"", i),
                    size: 1000 + i,
                    created_ms: 1_700_000_000_000 + i,
                    crc32: i as u32,
                    blocks: Vec::new(),
                };
                // Every start checks the disk against the index: the files must be there.
                let shard = cache_dir.join(k.shard());
                std::fs::create_dir_all(&shard).expect("shard dir");
                std::fs::File::create(shard.join(k.hex()))
                    .and_then(|f| f.set_len(row.size))
                    .expect("entry file");
                b.upserts.push((k, row, (i + 1, 1_700_000_000_000 + i, 0)));
            }
            db.apply(&b, true).expect("apply");
        }
        db.set_meta("clean", 1).expect("clean");
    }
    println!("wrote {n} index rows and files in {:.2?}", t.elapsed());

    // Memory: the in-memory index alone, built from the rows.
    let (db, loaded) = IndexDb::open(&db_path).expect("open");
    let index = Index::from_entries(u64::MAX, u64::MAX, loaded.entries);
    // What the index owns (nodes, hash table, ETag strings) is what dropping it frees.
    let with = IN_USE.load(Ordering::Relaxed);
    let count = index.len();
    drop(index);
    let without = IN_USE.load(Ordering::Relaxed);
    println!(
        "in-memory index: {count} entries own {} bytes: {:.0} bytes per entry",
        with - without,
        (with - without) as f64 / n as f64
    );
    db.set_meta("clean", 1).expect("clean");
    drop(db);

    // Time: a whole Cache::open (lock, shard dirs, index load, LRU rebuild), median of 5.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            rt.block_on(async {
                let cfg = CacheConfig {
                    max_size: u64::MAX / 2,
                    max_entries: u64::MAX / 2,
                    ttl: Duration::from_secs(86_400 * 365 * 100),
                    sweep_interval: Duration::from_secs(3600),
                    read_timeout: Duration::from_secs(30),
                    ..CacheConfig::at(&cache_dir)
                };
                let t = Instant::now();
                let cache = Cache::open(cfg, Arc::new(MemoryStore::new()), Arc::new(SystemClock))
                    .expect("open");
                let took = t.elapsed();
                assert_eq!(cache.stats().entry_count, n);
                cache.close().expect("close");
                took
            })
        })
        .collect();
    times.sort();
    println!(
        "Cache::open with {n} entries: median {:.0?} (min {:.0?}, max {:.0?}, 5 runs)",
        times[2], times[0], times[4]
    );
}
