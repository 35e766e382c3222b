//! Behaviour under faults injected by the test server, and on a full or unusable disk:
//! the right bytes or a clear error, in bounded time, and nothing left behind.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use s3cachefs::cache::{Cache, ObjectHandle, Outcome};

use crate::common::{Env, pattern};
use crate::s3server::Kind;

async fn read_all(h: &ObjectHandle) -> Result<Vec<u8>, s3cachefs::cache::CacheError> {
    Ok(h.read(0, h.size as usize).await?.to_vec())
}

fn tmp_files(env: &Env) -> usize {
    std::fs::read_dir(env.cache_dir().join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn small_parts_cache(env: &Env) -> Cache {
    let mut cfg = env.cache_config();
    cfg.part_size = 256 << 10;
    cfg.read_timeout = Duration::from_secs(20);
    env.cache(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried() {
    let env = Env::new();
    let data = pattern(60, 2 << 20);
    env.server.put("bkt", "obj", data.clone());
    let cache = small_parts_cache(&env).await;
    // Slow down the parts after the first GET: 503 SlowDown, then 500s.
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    env.server.faults.fail(Some(Kind::Get), 3, 503);
    assert!(read_all(&h).await.expect("read") == data);
    env.server.faults.fail(Some(Kind::Get), 2, 500);
    cache.wait_for_downloads().await;
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    assert!(read_all(&h).await.expect("read") == data);
    assert!(
        env.server.counters.count(Kind::Get) > 8,
        "failed requests were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_off_resumes_from_the_last_byte() {
    let env = Env::new();
    let data = pattern(61, 3 << 20);
    env.server.put("bkt", "obj", data.clone());
    env.server.faults.cut_after.store(100_000, Ordering::SeqCst);
    env.server.faults.cut_next_gets.store(3, Ordering::SeqCst);
    let cache = small_parts_cache(&env).await;
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    assert!(read_all(&h).await.expect("read") == data);
    cache.wait_for_downloads().await;
    assert!(
        cache.contains("bkt", "obj"),
        "the resumed download was verified and kept"
    );
    // Resumed, not restarted: about one object's worth of bytes crossed the wire.
    let sent = env.server.counters.get_bytes.load(Ordering::SeqCst);
    assert!(sent < data.len() as u64 + 400_000, "{sent} bytes sent");
    assert_eq!(tmp_files(&env), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_times_out_and_is_retried() {
    let env = Env::new();
    let data = pattern(62, 1 << 20);
    env.server.put("bkt", "obj", data.clone());
    env.server
        .faults
        .stall_after
        .store(50_000, Ordering::SeqCst);
    env.server.faults.stall_next_gets.store(1, Ordering::SeqCst);
    let cache = small_parts_cache(&env).await;
    let started = Instant::now();
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    assert!(read_all(&h).await.expect("read") == data);
    // The SDK's stalled-stream protection gives up on a silent body after ~5 s.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_off_resumes_with_the_cache_off_too() {
    let env = Env::new();
    let data = pattern(66, 3 << 20);
    env.server.put("bkt", "obj", data.clone());
    let mut cfg = env.cache_config();
    cfg.enabled = false;
    let cache = env.cache(cfg).await;
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    assert_eq!(h.outcome, Outcome::Direct);
    env.server.faults.cut_after.store(100_000, Ordering::SeqCst);
    env.server.faults.cut_next_gets.store(3, Ordering::SeqCst);
    let mut got = Vec::new();
    while got.len() < data.len() {
        let b = h.read(got.len() as u64, 128 << 10).await.expect("read");
        assert!(!b.is_empty());
        got.extend_from_slice(&b);
    }
    assert!(got == data);
    let sent = env.server.counters.get_bytes.load(Ordering::SeqCst);
    assert!(
        sent < data.len() as u64 + 400_000,
        "resumed, not restarted: {sent} bytes sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_cannot_be_served_fails_in_bounded_time() {
    let env = Env::new();
    let data = pattern(63, 4 << 20);
    env.server.put("bkt", "obj", data.clone());
    let mut cfg = env.cache_config();
    cfg.part_size = 256 << 10;
    cfg.read_timeout = Duration::from_secs(5);
    let cache = env.cache(cfg).await;
    let h = cache.open_object("bkt", "obj", None).await.expect("open");
    // From now on every GET fails.
    env.server.faults.fail(Some(Kind::Get), 1_000_000, 500);
    let started = Instant::now();
    let r = h.read(3 << 20, 4096).await;
    assert!(r.is_err(), "no bytes can be had");
    // The fill's wait, then one more for the read straight from S3: two read timeouts.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "failed after {:?}",
        started.elapsed()
    );
    env.server.faults.fail_next.store(0, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_replaced_between_head_and_get_is_read_whole_in_one_version() {
    let env = Env::new();
    let v1 = pattern(64, 1 << 20);
    let v2 = pattern(65, 1 << 20);
    env.server.put("bkt", "obj", v1.clone());
    let cache = env.cache(env.cache_config()).await;
    // Known metadata says v1; the object changes before the GET.
    let known = cache.store().head("bkt", "obj").await.expect("head");
    env.server.put("bkt", "obj", v2.clone());
    let h = cache
        .open_object("bkt", "obj", Some(known))
        .await
        .expect("open");
    let got = read_all(&h).await.expect("read");
    assert!(got == v2, "the version there now, whole");
}

/// A small tmpfs at the cache directory, unmounted (lazily) on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("mkdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount tmpfs");
        assert!(st.success(), "mount tmpfs (the tests run as root)");
        SmallDisk(dir.to_path_buf())
    }

    /// Bytes in use on it, as `df` says.
    fn used(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).expect("statvfs");
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Another program fills the cache's disk while an object downloads: the download is
/// dropped and its file closed at once, so the space comes back (df shows only what the
/// index accounts for); the read goes on from S3 with the right bytes; once there is
/// room again, the next object is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_its_space_back_and_caches_again_once_there_is_room() {
    let env = Env::new();
    let disk = SmallDisk::mount(&env.cache_dir(), "16m");
    let big = pattern(67, 12 << 20);
    env.server.put("bkt", "big", big.clone());
    let small = pattern(66, 3 << 20);
    env.server.put("bkt", "small", small.clone());
    let mut cfg = env.cache_config();
    cfg.part_size = 1 << 20;
    cfg.fill_concurrency = 1;
    let cache = env.cache(cfg).await;
    let empty = disk.used();
    // Slow enough (one GET at a time, 4 MiB/s) that the filler below lands while the
    // download is under way.
    env.server.faults.get_rate.store(4 << 20, Ordering::SeqCst);
    let h = cache.open_object("bkt", "big", None).await.expect("open");
    assert_eq!(h.outcome, Outcome::Miss);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let landed = disk.used() - empty;
    assert!(landed > 2 << 20, "some of the download landed: {landed}");
    // Another program takes every byte left.
    let filler = env.cache_dir().join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![7u8; 1 << 20];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let filler_len = std::fs::metadata(&filler).expect("filler").len();
    env.server.faults.get_rate.store(0, Ordering::SeqCst);
    assert!(read_all(&h).await.expect("big is still read") == big);
    // The partial download's space is back within a second of the disk filling up.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let over = disk
            .used()
            .saturating_sub(empty + filler_len + cache.stats().total_size);
        if over < 256 << 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{over} bytes beyond the filler and the index: the dropped download's space was not given back; {:?}, landed {landed}, filler {filler_len}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cache.wait_for_downloads().await;
    assert!(
        !cache.contains("bkt", "big"),
        "not kept: the disk filled up"
    );
    assert_eq!(tmp_files(&env), 0, "no partial file left");
    let s = cache.stats();
    assert!(s.disk_full_events >= 1 && s.not_kept >= 1, "{s:?}");
    assert_eq!(s.errors, 0, "no read failed: {s:?}");
    // Room again: the next object is cached.
    std::fs::remove_file(&filler).expect("rm filler");
    let h = cache.open_object("bkt", "small", None).await.expect("open");
    assert!(read_all(&h).await.expect("small") == small);
    cache.wait_for_downloads().await;
    assert!(
        cache.contains("bkt", "small"),
        "cached again once there was room"
    );
    cache.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_dir_that_is_a_file_is_refused_with_a_clear_error() {
    let env = Env::new();
    // A file where the cache directory should be.
    std::fs::write(env.cache_dir(), "not a directory").expect("write");
    let store = env.store().await;
    let err = Cache::open(
        env.cache_config(),
        store,
        std::sync::Arc::new(s3cachefs::cache::SystemClock),
    )
    .expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("not a directory") && msg.contains("--cache-dir"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(env.cache_dir()).expect("untouched"),
        "not a directory"
    );
}
