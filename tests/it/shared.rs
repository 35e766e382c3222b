//! The shared cache tier: several mounts ("hosts", each with its own cache dir) over one
//! origin server and one tier server, both real S3-protocol servers on 127.0.0.1.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{Env, pattern};
use crate::mount::{Mount, bin, scopeguard, stat_u64, wait_until};
use crate::s3server::{Kind, TestServer};

const TIER_BUCKET: &str = "tier";
const PREFIX: &str = "fleet";

/// The origin (the env's server) and a second server holding the tier's bucket.
struct Fleet {
    env: Env,
    tier: TestServer,
}

impl Fleet {
    fn new() -> Fleet {
        let env = Env::new();
        let tier = TestServer::start(&env.tmp.path().join("tier-objects"), 0).expect("tier");
        tier.create_bucket(TIER_BUCKET);
        Fleet { env, tier }
    }

    fn tier_args(&self) -> Vec<String> {
        vec![
            "--shared-cache".into(),
            format!("s3://{TIER_BUCKET}/{PREFIX}"),
            "--shared-endpoint-url".into(),
            self.tier.endpoint(),
        ]
    }

    fn host(&self, name: &str, extra: &[&str]) -> Mount {
        let mut args = self.tier_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Mount::start_host(&self.env, name, &args)
    }

    /// Every block file in the tier, by path (s3s-fs keeps objects as files).
    fn blocks(&self) -> Vec<PathBuf> {
        let root = self
            .tier
            .root
            .join(TIER_BUCKET)
            .join(PREFIX)
            .join("s3cachefs/v1");
        let mut out = Vec::new();
        for dir in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = f.file_name().to_string_lossy().to_string();
                if name.len() == 6 && name.bytes().all(|b| b.is_ascii_digit()) {
                    out.push(f.path());
                }
            }
        }
        out.sort();
        out
    }

    fn origin_gets(&self) -> u64 {
        self.env.server.counters.count(Kind::Get)
    }
}

/// Waits until `m` has no download under way, no upload waiting, and has made `n`
/// uploads in all.
fn wait_uploaded(m: &Mount, n: u64) {
    wait_until(
        || {
            stat_u64(m, "downloads_in_flight") == 0
                && stat_u64(m, "shared_uploads_pending") == 0
                && stat_u64(m, "shared_uploads") >= n
        },
        &format!("{n} uploads"),
    );
    assert_eq!(stat_u64(m, "shared_uploads"), n, "{}", m.stats());
}

/// Seconds to the first 4 KiB of `path`, and all of its bytes.
fn timed_read(path: &Path) -> (f64, Vec<u8>) {
    let t = Instant::now();
    let mut f = std::fs::File::open(path).expect("open");
    let mut first = vec![0u8; 4096];
    f.read_exact(&mut first).expect("first bytes");
    let first_byte = t.elapsed().as_secs_f64();
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).expect("read");
    first.extend(rest);
    (first_byte, first)
}

fn list(m: &Mount, dir: &str) {
    let n = std::fs::read_dir(m.p(dir)).expect("ls").count();
    assert!(n > 0, "{dir} is empty");
}

#[test]
fn a_second_host_reads_from_the_shared_tier_with_no_get_to_the_origin() {
    let fleet = Fleet::new();
    let data = pattern(1, 64 << 20);
    fleet.env.server.put("bkt", "big.bin", data.clone());
    // A tier in the same zone, an origin farther away (far enough that the comparison of
    // first bytes holds on a loaded machine).
    let origin_faults = &fleet.env.server.faults;
    origin_faults.latency_ms.store(100, Ordering::SeqCst);
    let a = fleet.host("a", &[]);
    list(&a, "bkt");
    let (a_first, got) = timed_read(&a.p("bkt/big.bin"));
    assert!(got == data, "host a: wrong bytes");
    wait_uploaded(&a, 8);
    assert_eq!(fleet.blocks().len(), 8);
    assert_eq!(stat_u64(&a, "bytes_from_shared"), 0);
    assert_eq!(a.stats()["shared_state"], "ok");

    let b = fleet.host("b", &[]);
    list(&b, "bkt");
    let gets = fleet.origin_gets();
    let (b_first, got) = timed_read(&b.p("bkt/big.bin"));
    assert!(got == data, "host b: wrong bytes");
    assert_eq!(
        fleet.origin_gets(),
        gets,
        "host b asked the origin: {}",
        b.stats()
    );
    assert_eq!(stat_u64(&b, "shared_hits"), 8, "{}", b.stats());
    assert_eq!(stat_u64(&b, "bytes_from_shared"), 64 << 20);
    assert_eq!(stat_u64(&b, "bytes_from_s3"), 0);
    assert_eq!(
        stat_u64(&b, "shared_uploads"),
        0,
        "nothing from the tier goes back"
    );
    assert!(
        b_first <= a_first,
        "first byte: host b {b_first:.4}s, host a {a_first:.4}s"
    );
    // And b keeps it: a local hit now.
    crate::mount::wait_settled(&b);
    assert!(std::fs::read(b.p("bkt/big.bin")).expect("again") == data);
    assert_eq!(fleet.origin_gets(), gets);
}

#[test]
fn a_new_version_gets_new_blocks_and_no_old_block_is_served() {
    let fleet = Fleet::new();
    let v1 = pattern(2, 3 << 20);
    let v2 = pattern(3, 3 << 20);
    fleet.env.server.put("bkt", "obj.bin", v1.clone());
    let opts = ["--part-size-mb", "1", "--metadata-ttl", "1"];
    let a = fleet.host("a", &opts);
    assert!(std::fs::read(a.p("bkt/obj.bin")).expect("a v1") == v1);
    wait_uploaded(&a, 3);

    fleet.env.server.put("bkt", "obj.bin", v2.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let b = fleet.host("b", &opts);
    assert!(
        std::fs::read(b.p("bkt/obj.bin")).expect("b v2") == v2,
        "host b: not v2"
    );
    assert_eq!(stat_u64(&b, "shared_hits"), 0, "{}", b.stats());
    assert_eq!(stat_u64(&b, "shared_corrupt"), 0);
    assert!(stat_u64(&b, "shared_misses") >= 1);
    assert!(
        std::fs::read(a.p("bkt/obj.bin")).expect("a v2") == v2,
        "host a: not v2"
    );
    wait_uploaded(&b, 3);
    // Both versions' blocks are there, under different names.
    assert_eq!(fleet.blocks().len(), 6);
    let c = fleet.host("c", &opts);
    let gets = fleet.origin_gets();
    assert!(
        std::fs::read(c.p("bkt/obj.bin")).expect("c v2") == v2,
        "host c: not v2"
    );
    assert_eq!(stat_u64(&c, "shared_hits"), 3);
    assert_eq!(fleet.origin_gets(), gets);
}

#[test]
fn a_corrupt_block_is_refused_counted_and_replaced_from_the_origin() {
    let fleet = Fleet::new();
    let data = pattern(4, 3 << 20);
    fleet.env.server.put("bkt", "obj.bin", data.clone());
    let opts = ["--part-size-mb", "1"];
    let a = fleet.host("a", &opts);
    assert!(std::fs::read(a.p("bkt/obj.bin")).expect("a") == data);
    wait_uploaded(&a, 3);
    let blocks = fleet.blocks();
    assert_eq!(blocks.len(), 3);
    // A flipped byte in the data of block 1; block 0's (valid) body at block 2's key.
    let mut b1 = std::fs::read(&blocks[1]).expect("block 1");
    let last = b1.len() - 10;
    b1[last] ^= 0x40;
    std::fs::write(&blocks[1], &b1).expect("corrupt block 1");
    std::fs::copy(&blocks[0], &blocks[2]).expect("misplace block 0");

    let b = fleet.host("b", &opts);
    let gets = fleet.origin_gets();
    assert!(
        std::fs::read(b.p("bkt/obj.bin")).expect("b") == data,
        "host b: wrong bytes"
    );
    assert_eq!(stat_u64(&b, "shared_corrupt"), 2, "{}", b.stats());
    assert_eq!(stat_u64(&b, "shared_hits"), 1);
    assert!(
        fleet.origin_gets() >= gets + 2,
        "the two parts came from the origin"
    );
    // b deleted the bad blocks and shared its good copies in their place.
    wait_uploaded(&b, 2);
    let c = fleet.host("c", &opts);
    let gets = fleet.origin_gets();
    assert!(std::fs::read(c.p("bkt/obj.bin")).expect("c") == data);
    assert_eq!(stat_u64(&c, "shared_corrupt"), 0, "{}", c.stats());
    assert_eq!(stat_u64(&c, "shared_hits"), 3);
    assert_eq!(fleet.origin_gets(), gets);
}

#[test]
fn a_tier_that_is_down_slow_or_failing_never_fails_a_read() {
    let mut fleet = Fleet::new();
    let again = pattern(20, 1 << 20);
    fleet.env.server.put("bkt", "again.bin", again.clone());
    let cases = ["down", "slow", "failing"];
    let data = |i: usize| pattern(10 + i as u64, 3 << 20);
    for (i, name) in cases.iter().enumerate() {
        fleet.env.server.put("bkt", &format!("{name}.bin"), data(i));
    }
    // The tier has every block, so each case's failure is met on blocks that exist.
    let seed = fleet.host("seed", &["--part-size-mb", "1"]);
    for name in cases {
        std::fs::read(seed.p(&format!("bkt/{name}.bin"))).expect("seed");
    }
    wait_uploaded(&seed, 9);
    for (i, name) in cases.iter().enumerate() {
        let key = format!("{name}.bin");
        let data = data(i);
        let m = fleet.host(name, &["--part-size-mb", "1", "--read-timeout", "10"]);
        list(&m, "bkt");
        match *name {
            "down" => fleet.tier.stop(),
            "slow" => {
                fleet.tier.faults.stall_after.store(100, Ordering::SeqCst);
                fleet
                    .tier
                    .faults
                    .stall_next_gets
                    .store(100, Ordering::SeqCst);
            }
            _ => fleet.tier.faults.fail(Some(Kind::Get), 100, 500),
        }
        let t = Instant::now();
        let got = std::fs::read(m.p(&format!("bkt/{key}"))).expect("read");
        let took = t.elapsed();
        assert!(got == data, "{name}: wrong bytes");
        assert!(took < Duration::from_secs(10), "{name}: took {took:?}");
        assert!(stat_u64(&m, "shared_errors") >= 3, "{name}: {}", m.stats());
        assert_eq!(m.stats()["shared_state"], "unreachable", "{name}: breaker");
        assert_eq!(stat_u64(&m, "errors"), 0);
        // Back to normal; the breaker lets the tier in again after its pause.
        match *name {
            "down" => fleet.tier.restart().expect("restart tier"),
            "slow" => fleet.tier.faults.stall_next_gets.store(0, Ordering::SeqCst),
            _ => fleet.tier.faults.fail(None, 0, 500),
        }
        if *name == "down" {
            std::thread::sleep(Duration::from_secs(11));
            assert_eq!(m.stats()["shared_state"], "ok");
            // What failed to upload while the tier was down has been retried by now.
            let before = stat_u64(&m, "shared_uploads");
            assert!(std::fs::read(m.p("bkt/again.bin")).expect("again") == again);
            wait_uploaded(&m, before + 1);
        }
    }
}

#[test]
fn two_hosts_filling_one_cold_object_at_once_upload_each_part_once() {
    let fleet = Fleet::new();
    let data = pattern(5, 8 << 20);
    fleet.env.server.put("bkt", "obj.bin", data.clone());
    let opts = ["--part-size-mb", "1"];
    let a = fleet.host("a", &opts);
    let b = fleet.host("b", &opts);
    let (pa, pb) = (a.p("bkt/obj.bin"), b.p("bkt/obj.bin"));
    let ta = std::thread::spawn(move || std::fs::read(pa).expect("a"));
    let tb = std::thread::spawn(move || std::fs::read(pb).expect("b"));
    assert!(ta.join().expect("a") == data, "host a: wrong bytes");
    assert!(tb.join().expect("b") == data, "host b: wrong bytes");
    wait_until(
        || {
            [&a, &b].iter().all(|m| {
                stat_u64(m, "downloads_in_flight") == 0
                    && stat_u64(m, "shared_uploads_pending") == 0
            })
        },
        "uploads",
    );
    let uploads = stat_u64(&a, "shared_uploads") + stat_u64(&b, "shared_uploads");
    assert_eq!(uploads, 8, "a: {}\nb: {}", a.stats(), b.stats());
    assert_eq!(fleet.blocks().len(), 8);
}

#[test]
fn a_read_only_host_uploads_nothing_and_gc_keeps_the_tier_under_its_size() {
    let fleet = Fleet::new();
    for i in 0..3 {
        fleet
            .env
            .server
            .put("bkt", &format!("o{i}.bin"), pattern(30 + i, 4 << 20));
    }
    let ro = fleet.host("ro", &["--shared-read-only"]);
    assert_eq!(ro.stats()["shared_state"], "read-only");
    assert!(std::fs::read(ro.p("bkt/o0.bin")).expect("ro") == pattern(30, 4 << 20));
    crate::mount::wait_settled(&ro);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        fleet.tier.counters.count(Kind::Put),
        0,
        "a read-only host wrote"
    );
    assert!(fleet.blocks().is_empty());

    let a = fleet.host("a", &["--part-size-mb", "1"]);
    for i in 0..3 {
        assert!(
            std::fs::read(a.p(&format!("bkt/o{i}.bin")))
                .expect("a")
                .len()
                == 4 << 20
        );
        // Distinct write times, oldest first.
        wait_uploaded(&a, 4 * (i + 1));
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(fleet.blocks().len(), 12);
    let tier_bytes = |f: &Fleet| -> u64 {
        f.blocks()
            .iter()
            .map(|p| std::fs::metadata(p).expect("block").len())
            .sum()
    };
    // 9 MiB as GiB: room for two of the three versions (4 MiB and headers each).
    let limit = 9u64 << 20;
    let out = bin()
        .args(["shared", "gc", &format!("s3://{TIER_BUCKET}/{PREFIX}")])
        .args([
            "--max-size-gb",
            &format!("{}", limit as f64 / (1u64 << 30) as f64),
        ])
        .args([
            "--endpoint-url",
            &fleet.tier.endpoint(),
            "--force-path-style",
        ])
        .output()
        .expect("gc");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("deleted 4 blocks of 1 object version"),
        "{said}"
    );
    assert!(tier_bytes(&fleet) <= limit, "{said}");
    assert_eq!(fleet.blocks().len(), 8);
    // The oldest (o0) went: a new host finds o1 and o2 in the tier, not o0.
    let c = fleet.host("c", &["--part-size-mb", "1"]);
    for i in 0..3 {
        std::fs::read(c.p(&format!("bkt/o{i}.bin"))).expect("c");
    }
    assert_eq!(stat_u64(&c, "shared_hits"), 8, "{}", c.stats());
    // Bad use is refused with exit 2 and says why.
    let out = bin()
        .args(["shared", "gc", "s3://tier/fleet"])
        .output()
        .expect("gc");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-size-gb"));
}

#[test]
fn an_unusable_tier_is_reported_and_the_mount_works_without_it() {
    let fleet = Fleet::new();
    fleet.env.server.put("bkt", "k.bin", pattern(6, 1 << 20));
    let mp = fleet.env.tmp.path().join("bg");
    std::fs::create_dir_all(&mp).expect("mountpoint");
    // Nothing listens there.
    let out = crate::mount::mount_cmd(&fleet.env, &mp, &fleet.env.tmp.path().join("bg-cache"))
        .args(["--shared-cache", "s3://tier/x"])
        .args(["--shared-endpoint-url", "http://127.0.0.1:1"])
        .output()
        .expect("mount");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let _unmount = scopeguard(&mp);
    assert!(
        err.contains("s3://tier/x cannot be used") && err.contains("without it"),
        "{err}"
    );
    assert!(std::fs::read(mp.join("bkt/k.bin")).expect("read") == pattern(6, 1 << 20));
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mp.join(".cache-stats")).expect("stats"))
            .expect("json");
    assert_eq!(stats["shared_state"], "unreachable");
    // Shared-tier settings without a tier are a mistake, named.
    let out = crate::mount::mount_cmd(&fleet.env, &mp, &fleet.env.tmp.path().join("x"))
        .args(["--shared-read-only"])
        .output()
        .expect("mount");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shared-read-only needs"));
}
