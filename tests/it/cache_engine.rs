//! The cache engine against a real S3-protocol server, through the aws-sdk-s3 store.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use s3cachefs::cache::{Cache, ManualClock, ObjectHandle, Outcome, SystemClock};
use s3cachefs::store::StoreError;

use crate::common::{Env, cache_config, pattern, s3_options};
use crate::s3server::Kind;

async fn read_all(h: &ObjectHandle) -> Vec<u8> {
    h.read(0, h.size as usize).await.expect("read").to_vec()
}

/// Opens and reads the whole object, then waits until its download is committed, so
/// the next step sees a settled cache.
async fn fetch(cache: &Cache, bucket: &str, key: &str) -> ObjectHandle {
    let h = cache.open_object(bucket, key, None).await.expect("open");
    read_all(&h).await;
    cache.wait_for_downloads().await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit() {
    let env = Env::new();
    let data = pattern(1, 300_000);
    env.server.put("bkt", "dir/file.bin", data.clone());
    let cache = env.cache(env.cache_config()).await;

    let h = cache
        .open_object("bkt", "dir/file.bin", None)
        .await
        .expect("open");
    assert_eq!(h.outcome, Outcome::Miss);
    assert_eq!(read_all(&h).await, data);
    cache.wait_for_downloads().await;
    let h = cache
        .open_object("bkt", "dir/file.bin", None)
        .await
        .expect("open");
    assert_eq!(h.outcome, Outcome::Hit);
    assert_eq!(read_all(&h).await, data);

    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.entry_count), (1, 1, 1));
    assert_eq!(s.total_size, data.len() as u64);
    assert_eq!(s.bytes_from_s3, data.len() as u64);
    assert_eq!(s.etag_validations, 1);
    assert_eq!(env.server.counters.gets_of("bkt", "dir/file.bin"), 1);
    // The file sits at <dir>/<first two hex>/<key>, private to its owner.
    let path = cache.entry_path("bkt", "dir/file.bin").expect("path");
    let key = cache.key_of("bkt", "dir/file.bin").hex();
    assert!(path.ends_with(format!("{}/{}", &key[..2], key)));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let row = cache.entry_row("bkt", "dir/file.bin").expect("row");
    assert_eq!(row.url, "s3://bkt/dir/file.bin");
    assert_eq!(row.profile, "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_etag_refetches_and_old_handle_keeps_its_bytes() {
    let env = Env::new();
    env.server.put("bkt", "obj", "version one");
    let cache = env.cache(env.cache_config()).await;
    let old = cache.open_object("bkt", "obj", None).await.expect("open");
    env.server.put("bkt", "obj", "version two!");
    let new = cache.open_object("bkt", "obj", None).await.expect("open");
    assert_eq!(new.outcome, Outcome::Miss);
    assert_eq!(read_all(&new).await, b"version two!");
    assert_eq!(read_all(&old).await, b"version one");
    cache.wait_for_downloads().await;
    let s = cache.stats();
    assert!(s.etag_mismatches >= 1);
    assert_eq!(s.entry_count, 1);
    assert_eq!(env.server.counters.gets_of("bkt", "obj"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_on_access_and_by_background_sweep() {
    let env = Env::new();
    env.server.put("bkt", "a", "aaa");
    env.server.put("bkt", "b", "bbb");
    let clock = ManualClock::new(1_000_000);
    let mut cfg = env.cache_config();
    cfg.ttl = Duration::from_secs(3600);
    cfg.sweep_interval = Duration::from_millis(50);
    let cache = env.cache_with_clock(cfg, clock.clone()).await;
    fetch(&cache, "bkt", "a").await;
    clock.advance_ms(3_599_000);
    assert_eq!(
        cache
            .open_object("bkt", "a", None)
            .await
            .expect("open")
            .outcome,
        Outcome::Hit
    );
    clock.advance_ms(1_000);
    let h = cache.open_object("bkt", "a", None).await.expect("open");
    assert_eq!(h.outcome, Outcome::Miss);
    assert_eq!(cache.stats().expirations, 1);

    // The sweep frees space without waiting for an access.
    fetch(&cache, "bkt", "b").await;
    let path = cache.entry_path("bkt", "b").expect("path");
    assert!(path.exists());
    clock.advance_ms(3_600_000);
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.contains("bkt", "b") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!cache.contains("bkt", "b"), "sweep removed the entry");
    assert!(!path.exists(), "sweep removed the file");
    assert_eq!(cache.stats().entry_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_limit_keeps_the_200_most_recently_used() {
    let env = Env::new();
    for i in 0..300 {
        env.server
            .put("bkt", &format!("k{i}"), format!("object {i}"));
    }
    let cache = env.cache(env.cache_config()).await;
    for i in 0..150 {
        fetch(&cache, "bkt", &format!("k{i}")).await;
    }
    // Use the first 50 again: they are now more recent than 50..150.
    for i in 0..50 {
        let h = cache
            .open_object("bkt", &format!("k{i}"), None)
            .await
            .expect("open");
        assert_eq!(h.outcome, Outcome::Hit);
    }
    for i in 150..300 {
        fetch(&cache, "bkt", &format!("k{i}")).await;
        assert!(cache.stats().entry_count <= 200);
    }
    let expect: Vec<_> = (150..300)
        .chain(0..50)
        .map(|i| cache.key_of("bkt", &format!("k{i}")))
        .collect();
    let mut got = cache.keys_lru_first();
    // 0..50 were used before 150..300 were inserted: LRU first.
    let mut want = expect.clone();
    want.rotate_left(150);
    assert_eq!(got.len(), 200);
    assert_eq!(got, want);
    got.sort();
    let mut expect = expect;
    expect.sort();
    assert_eq!(got, expect);
    let s = cache.stats();
    assert_eq!((s.entry_count, s.evictions), (200, 100));
    // Evicted files are gone from disk.
    assert!(!cache.entry_path("bkt", "k50").expect("path").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_is_never_exceeded_and_evicts_lru() {
    let env = Env::new();
    for i in 0..6 {
        env.server.put("bkt", &format!("k{i}"), pattern(i, 3000));
    }
    env.server.put("bkt", "huge", pattern(99, 20_000));
    let mut cfg = env.cache_config();
    cfg.max_size = 10_000;
    let cache = env.cache(cfg).await;
    for i in 0..6 {
        eprintln!("DEBUG fetch k{i}");
        let h = cache
            .open_object("bkt", &format!("k{i}"), None)
            .await
            .expect("open");
        eprintln!("DEBUG opened {:?}", h);
        read_all(&h).await;
        eprintln!("DEBUG read; stats {:?}", cache.stats());
        cache.wait_for_downloads().await;
        assert!(cache.stats().total_size <= 10_000);
    }
    let want: Vec<_> = (3..6)
        .map(|i| cache.key_of("bkt", &format!("k{i}")))
        .collect();
    assert_eq!(cache.keys_lru_first(), want);
    // Larger than the whole cache: served, not stored, nothing evicted.
    let h = cache.open_object("bkt", "huge", None).await.expect("open");
    assert_eq!(h.outcome, Outcome::Direct);
    assert_eq!(read_all(&h).await, pattern(99, 20_000));
    assert_eq!(cache.keys_lru_first(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_entries_and_lru_order() {
    let env = Env::new();
    for i in 0..5 {
        env.server.put("bkt", &format!("k{i}"), pattern(i, 1000));
    }
    let before = {
        let cache = env.cache(env.cache_config()).await;
        for i in [0, 1, 2, 3, 4, 1, 0] {
            fetch(&cache, "bkt", &format!("k{i}")).await;
        }
        let order = cache.keys_lru_first();
        cache.wait_for_downloads().await;
        cache.close().expect("close");
        order
    };
    env.server.counters.reset();
    let cache = env.cache(env.cache_config()).await;
    assert_eq!(cache.keys_lru_first(), before);
    for i in 0..5 {
        let h = cache
            .open_object("bkt", &format!("k{i}"), None)
            .await
            .expect("open");
        assert_eq!(h.outcome, Outcome::Hit);
        assert_eq!(read_all(&h).await, pattern(i, 1000));
    }
    assert_eq!(env.server.counters.count(Kind::Get), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_or_truncation_is_caught_and_refetched() {
    let env = Env::new();
    env.server.put("bkt", "flip", pattern(5, 50_000));
    env.server.put("bkt", "cut", pattern(6, 50_000));
    {
        let cache = env.cache(env.cache_config()).await;
        fetch(&cache, "bkt", "flip").await;
        fetch(&cache, "bkt", "cut").await;
        let p = cache.entry_path("bkt", "flip").expect("path");
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[12_345] ^= 0x01;
        std::fs::write(&p, bytes).expect("write");
        let p = cache.entry_path("bkt", "cut").expect("path");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open");
        f.set_len(40_000).expect("truncate");
        cache.close().expect("close");
    }
    let cache = env.cache(env.cache_config()).await;
    for (key, seed) in [("flip", 5), ("cut", 6)] {
        let h = cache.open_object("bkt", key, None).await.expect("open");
        assert_eq!(h.outcome, Outcome::Miss, "{key} is refetched");
        assert_eq!(read_all(&h).await, pattern(seed, 50_000));
    }
    assert_eq!(cache.stats().corruptions, 2);
    assert_eq!(env.server.counters.gets_of("bkt", "flip"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gets_of_a_cold_key_share_one_download() {
    let env = Env::new();
    let data = pattern(7, 2 << 20);
    env.server.put("bkt", "shared", data.clone());
    // Slow enough that all 16 ask while the download is under way.
    env.server.faults.get_rate.store(8 << 20, Ordering::SeqCst);
    let cache = env.cache(env.cache_config()).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let h = cache
                .open_object("bkt", "shared", None)
                .await
                .expect("open");
            read_all(&h).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), data);
    }
    assert_eq!(env.server.counters.gets_of("bkt", "shared"), 1);
    assert_eq!(cache.stats().bytes_from_s3, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_head_failure_serves_stale_and_404_removes() {
    let env = Env::new();
    env.server.put("bkt", "k", "cached bytes");
    let cache = env.cache(env.cache_config()).await;
    fetch(&cache, "bkt", "k").await;
    env.server.faults.fail(Some(Kind::Head), 10, 500);
    let h = cache.open_object("bkt", "k", None).await.expect("stale");
    assert_eq!(h.outcome, Outcome::StaleHit);
    assert_eq!(read_all(&h).await, b"cached bytes");
    assert_eq!(cache.stats().stale_served, 1);
    env.server.faults.fail_next.store(0, Ordering::SeqCst);
    env.server.delete("bkt", "k");
    let err = cache.open_object("bkt", "k", None).await.expect_err("gone");
    assert!(
        matches!(err.store_error(), Some(StoreError::NotFound(_))),
        "{err}"
    );
    assert!(!cache.contains("bkt", "k"));
    assert!(!cache.entry_path("bkt", "k").expect("path").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_off_reads_every_time_from_s3() {
    let env = Env::new();
    env.server.put("bkt", "k", "direct");
    let mut cfg = env.cache_config();
    cfg.enabled = false;
    let cache = env.cache(cfg).await;
    for _ in 0..3 {
        let h = cache.open_object("bkt", "k", None).await.expect("open");
        assert_eq!(h.outcome, Outcome::Direct);
        assert_eq!(read_all(&h).await, b"direct");
    }
    assert_eq!(env.server.counters.gets_of("bkt", "k"), 3);
    assert!(!env.cache_dir().exists());
    assert!(!cache.stats().enabled);
}

// ---- across processes -------------------------------------------------------------

const CHILD_ENV: &str = "S3CACHEFS_TEST_CHILD";

/// Runs `child_process_entry` of this test binary in a new process with `args`.
fn spawn_child(args: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--ignored",
        "--exact",
        "cache_engine::child_process_entry",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.env(CHILD_ENV, "1");
    for (k, v) in args {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Not a test of its own: the body of a child process started by the tests below.
#[test]
#[ignore = "run only as a child process by other tests"]
fn child_process_entry() {
    // Run any other way (`cargo test -- --ignored`), it checks nothing: say so rather
    // than pass.
    assert!(
        std::env::var(CHILD_ENV).is_ok(),
        "not a test: the body of a child process the cache_engine tests start"
    );
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Arc::new(s3cachefs::store::S3Store::new(&s3_options(&var("ENDPOINT"))).await);
        let cfg = cache_config(std::path::Path::new(&var("CACHE_DIR")));
        match Cache::open(cfg, store, Arc::new(SystemClock)) {
            Err(e) => println!("OPEN-ERROR: {e}"),
            Ok(cache) => {
                println!("OPENED");
                if !var("FETCH").is_empty() {
                    // Reading it all keeps this process downloading until it is killed.
                    let h = cache.open_object("bkt", &var("FETCH"), None).await;
                    if let Ok(h) = &h {
                        let _ = h.read(0, h.size as usize).await;
                    }
                    println!("FETCHED: {:?}", h.map(|h| h.size));
                }
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_the_same_cache_dir_is_refused() {
    let env = Env::new();
    let _cache = env.cache(env.cache_config()).await;
    let out = spawn_child(&[
        ("ENDPOINT", env.server.endpoint()),
        ("CACHE_DIR", env.cache_dir().display().to_string()),
    ])
    .output()
    .expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OPEN-ERROR") && stdout.contains("in use by another s3cachefs process"),
        "child said: {stdout}"
    );
    assert!(
        stdout.contains(&format!("pid {}", std::process::id())),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_download_leaves_no_final_file_and_next_start_cleans_up() {
    let env = Env::new();
    let data = pattern(8, 4 << 20);
    env.server.put("bkt", "slow", data.clone());
    env.server.faults.get_rate.store(1 << 20, Ordering::SeqCst);
    let mut child = spawn_child(&[
        ("ENDPOINT", env.server.endpoint()),
        ("CACHE_DIR", env.cache_dir().display().to_string()),
        ("FETCH", "slow".into()),
    ])
    .spawn()
    .expect("child");
    // Wait until the download has written something, then kill -9.
    let tmp_dir = env.cache_dir().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let partial = std::fs::read_dir(&tmp_dir)
            .map(|d| d.flatten().any(|f| f.metadata().is_ok_and(|m| m.len() > 0)))
            .unwrap_or(false);
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "child never started downloading");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    env.server.faults.get_rate.store(0, Ordering::SeqCst);

    let key = s3cachefs::cache::CacheKey::new("bkt", "slow", "default").hex();
    let final_path = env.cache_dir().join(&key[..2]).join(&key);
    assert!(!final_path.exists(), "no file under its final name");
    assert!(std::fs::read_dir(&tmp_dir).expect("tmp").next().is_some());
    // A stray file under a shard (as if left by a crash mid-eviction).
    let stray = env
        .cache_dir()
        .join("ab")
        .join(format!("ab{}", "0".repeat(62)));
    std::fs::write(&stray, "orphan").expect("stray");

    let cache = env.cache(env.cache_config()).await;
    cache.wait_recovered().await;
    assert_eq!(
        std::fs::read_dir(&tmp_dir).expect("tmp").count(),
        0,
        "tmp cleaned"
    );
    assert!(!stray.exists(), "unknown file removed");
    let h = cache.open_object("bkt", "slow", None).await.expect("open");
    assert_eq!(h.outcome, Outcome::Miss);
    assert_eq!(read_all(&h).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_empties_the_cache_but_open_handles_keep_reading() {
    let env = Env::new();
    env.server.put("bkt", "a", pattern(1, 10_000));
    env.server.put("bkt", "b", pattern(2, 10_000));
    let cache = env.cache(env.cache_config()).await;
    let h = fetch(&cache, "bkt", "a").await;
    fetch(&cache, "bkt", "b").await;
    assert_eq!(cache.clear(), (2, 0));
    let s = cache.stats();
    assert_eq!((s.entry_count, s.total_size), (0, 0));
    assert!(!cache.entry_path("bkt", "a").expect("path").exists());
    assert_eq!(read_all(&h).await, pattern(1, 10_000));
    cache.close().expect("close");
    // Handles share the cache: the lock goes with the last of them.
    drop((h, cache));
    let cache = env.cache(env.cache_config()).await;
    assert_eq!(cache.stats().entry_count, 0, "cleared for good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_at_the_end_of_a_cold_object_is_served_before_the_fill_gets_there() {
    let env = Env::new();
    let size = 64 << 20;
    let data = pattern(40, size);
    env.server.put("bkt", "movie.mp4", data.clone());
    // 4 MiB/s per GET: the whole object would take many seconds.
    env.server.faults.get_rate.store(4 << 20, Ordering::SeqCst);
    let mut cfg = env.cache_config();
    cfg.part_size = 1 << 20;
    let cache = env.cache(cfg).await;
    let started = Instant::now();
    let h = cache
        .open_object("bkt", "movie.mp4", None)
        .await
        .expect("open");
    let tail = h.read(size as u64 - 4096, 4096).await.expect("tail");
    let took = started.elapsed();
    assert!(tail[..] == data[size - 4096..], "tail bytes match");
    let stats = cache.stats();
    let fetched = stats.bytes_from_s3;
    assert_eq!(stats.downloads_in_flight, 1, "the fill is still under way");
    assert!(
        fetched < size as u64 / 2,
        "the tail came before most of the object ({fetched} bytes fetched in {took:?})"
    );
    drop(h);
    env.server.faults.get_rate.store(0, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_never_mixes_two_versions() {
    never_mixes_two_versions(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_never_mixes_two_versions_when_the_server_ignores_if_match() {
    // Then only the version the answer carries tells the client.
    never_mixes_two_versions(true).await;
}

async fn never_mixes_two_versions(ignore_if_match: bool) {
    let env = Env::new();
    let size = 32 << 20;
    let v1 = pattern(41, size);
    let v2 = pattern(42, size);
    env.server.put("bkt", "obj", v1.clone());
    env.server
        .faults
        .ignore_if_match
        .store(ignore_if_match, Ordering::SeqCst);
    env.server.faults.get_rate.store(8 << 20, Ordering::SeqCst);
    let mut cfg = env.cache_config();
    cfg.part_size = 1 << 20;
    cfg.fill_concurrency = 2;
    let cache = env.cache(cfg).await;
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    let head = h.read(0, 4096).await.expect("first bytes");
    assert!(head[..] == v1[..4096]);
    // Replaced while the fill is under way.
    env.server.put("bkt", "obj", v2.clone());
    let mut failures = 0;
    for i in 0..32usize {
        let off = i * (1 << 20) + 12_345;
        match h.read(off as u64, 1000).await {
            Ok(b) => assert!(
                b[..] == v1[off..off + 1000],
                "read at {off} is of the version opened"
            ),
            Err(e) => {
                assert!(
                    matches!(e.store_error(), Some(StoreError::PreconditionFailed(_))),
                    "{e}"
                );
                failures += 1;
            }
        }
    }
    assert!(
        failures > 0,
        "bytes of the old version beyond the fill cannot be had"
    );
    env.server.faults.get_rate.store(0, Ordering::SeqCst);
    cache.wait_for_downloads().await;
    // The replaced version was not kept; the next open gets the new one whole.
    let h2 = cache.open_object("bkt", "obj", None).await.expect("open");
    assert!(read_all(&h2).await == v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_range_gives_errors_never_misplaced_bytes() {
    let env = Env::new();
    let data = pattern(43, (4 << 20) + 777);
    env.server.put("bkt", "obj", data.clone());
    env.server.faults.ignore_range.store(true, Ordering::SeqCst);
    let mut cfg = env.cache_config();
    cfg.part_size = 1 << 20;
    let cache = env.cache(cfg).await;
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    let mut failures = 0;
    for off in [0usize, 100, (1 << 20) + 5, (3 << 20) + 9, data.len() - 10] {
        match h.read(off as u64, 1000).await {
            Ok(b) => assert!(
                b[..] == data[off..(off + 1000).min(data.len())],
                "read at {off} is the object's bytes at {off}"
            ),
            Err(e) => {
                assert!(e.to_string().contains("ignored the Range header"), "{e}");
                failures += 1;
            }
        }
    }
    assert!(failures > 0, "the parts after the first cannot be had");
    cache.wait_for_downloads().await;
    assert!(
        !cache.contains("bkt", "obj"),
        "nothing half-fetched is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_object_reads_empty_whether_the_range_gets_416_or_200() {
    for ignore_range in [false, true] {
        let env = Env::new();
        env.server.put("bkt", "empty", Vec::new());
        env.server
            .faults
            .ignore_range
            .store(ignore_range, Ordering::SeqCst);
        let cache = env.cache(env.cache_config()).await;
        for _ in 0..2 {
            let h = cache.open_object("bkt", "empty", None).await.expect("open");
            assert_eq!(h.size, 0);
            assert!(h.read(0, 4096).await.expect("read").is_empty());
            cache.wait_for_downloads().await;
        }
        assert_eq!(cache.stats().errors, 0, "ignore_range {ignore_range}");
        cache.close().expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ranged_get_at_a_time_still_completes_a_many_part_fill() {
    let env = Env::new();
    let data = pattern(90, (1 << 20) + 12_345);
    env.server.put("bkt", "obj", data.clone());
    let mut cfg = env.cache_config();
    cfg.part_size = 256 << 10;
    cfg.fill_concurrency = 1;
    let cache = env.cache(cfg).await;
    // Only the first bytes are read: the rest must come from the fill's own worker.
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    assert_eq!(&h.read(0, 100).await.expect("read")[..], &data[..100]);
    tokio::time::timeout(Duration::from_secs(20), cache.wait_for_downloads())
        .await
        .expect("the fill finished");
    assert!(cache.contains("bkt", "obj"));
    cache.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_counts_its_bytes_as_from_the_cache_even_before_the_commit() {
    let env = Env::new();
    let data = pattern(91, 300_000);
    env.server.put("bkt", "obj", data.clone());
    let cache = env.cache(env.cache_config()).await;
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    assert!(read_all(&h).await == data);
    // At once: the download is usually still waiting for its group commit.
    let again = cache.open_object("bkt", "obj", None).await.expect("open");
    assert_eq!(again.outcome, Outcome::Hit);
    assert!(read_all(&again).await == data);
    let s = cache.stats();
    assert_eq!(s.bytes_from_cache, data.len() as u64, "{s:?}");
    assert_eq!(s.bytes_from_s3, data.len() as u64, "{s:?}");
    cache.close().expect("close");
}
