//! The real thing: `s3cachefs mount` as a process, a FUSE mount in a temp dir, the
//! in-process S3 server, and ordinary file APIs on the mount.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::{ACCESS_KEY, Env, SECRET_KEY, pattern};
use crate::s3server::Kind;

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_s3cachefs"));
    // Nothing from the caller's AWS setup leaks in.
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("CACHE_") || k.starts_with("S3CACHEFS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env_remove("VERBOSE")
        .env_remove("RUST_LOG");
    c
}

/// `s3cachefs mount MOUNTPOINT` against the env's server with `cache_dir` (in the
/// background unless `--foreground` is added).
pub fn mount_cmd(env: &Env, mountpoint: &Path, cache_dir: &Path) -> Command {
    let mut c = bin();
    c.arg("mount")
        .arg(mountpoint)
        .args([
            "--endpoint-url",
            &env.server.endpoint(),
            "--force-path-style",
        ])
        .arg("--cache-dir")
        .arg(cache_dir);
    c
}

pub fn is_mounted(path: &Path) -> bool {
    let (Ok(m), Some(Ok(p))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    m.dev() != p.dev()
}

/// A foreground `s3cachefs mount` child; unmounts (and kills) on drop, even on failure.
pub struct Mount {
    pub path: PathBuf,
    child: Option<Child>,
}

impl Mount {
    pub fn start(env: &Env, extra: &[&str]) -> Mount {
        Mount::start_logging_to(env, extra, Stdio::inherit())
    }

    /// Like `start`, with the mount's log (its stderr in the foreground) going to `log`.
    pub fn start_logging_to(env: &Env, extra: &[&str], log: Stdio) -> Mount {
        Mount::start_full(
            env,
            &env.tmp.path().join("mnt"),
            &env.cache_dir(),
            extra,
            log,
        )
    }

    /// Like `start`, on another cache dir than the env's.
    pub fn start_with_cache(env: &Env, cache_dir: &Path, extra: &[&str]) -> Mount {
        Mount::start_full(
            env,
            &env.tmp.path().join("mnt"),
            cache_dir,
            extra,
            Stdio::inherit(),
        )
    }

    /// Like `start`, as one of several hosts: its own mountpoint and cache dir, both
    /// named after `host`.
    pub fn start_host(env: &Env, host: &str, extra: &[&str]) -> Mount {
        let cache = env.tmp.path().join(format!("{host}-cache"));
        let path = env.tmp.path().join(host);
        Mount::start_full(env, &path, &cache, extra, Stdio::inherit())
    }

    fn start_full(env: &Env, path: &Path, cache_dir: &Path, extra: &[&str], log: Stdio) -> Mount {
        let path = path.to_path_buf();
        std::fs::create_dir_all(&path).expect("mountpoint");
        let mut cmd = mount_cmd(env, &path, cache_dir);
        cmd.arg("--foreground")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("spawn s3cachefs");
        let mut m = Mount {
            path,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&m.path) {
            if let Some(c) = m.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("s3cachefs exited before mounting: {status}");
            }
            assert!(Instant::now() < deadline, "mount did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.p(".cache-stats")).expect("read stats");
        serde_json::from_str(&text).expect("stats is JSON")
    }

    /// Kills the process outright, leaving a dead mount to be cleaned up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("s3cachefs did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn sha(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).expect("readdir") {
        let e = e.expect("entry");
        let p = e.path();
        if e.file_type().expect("type").is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .to_string();
            out.insert(rel);
        }
    }
}

#[test]
fn listing_of_2500_keys_and_every_byte_match_the_server() {
    let env = Env::new();
    let mut expect = BTreeSet::new();
    for i in 0..2500u64 {
        let key = if i < 1200 {
            format!("big/f{i:05}.bin")
        } else {
            format!("n{}/s{}/f{i}.bin", i % 5, i % 7)
        };
        env.server
            .put("bkt", &key, pattern(i, (i as usize * 37) % 5000));
        expect.insert(format!("bkt/{key}"));
    }
    let m = Mount::start(&env, &["--cache-max-entries", "5000"]);
    let mut got = BTreeSet::new();
    walk(&m.path, &m.path, &mut got);
    got.remove(".cache-stats");
    assert_eq!(got, expect);
    // readdir offsets across many kernel calls: every name once, in order.
    let names: Vec<_> = std::fs::read_dir(m.p("bkt/big"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1200);
    for i in (0..2500u64).step_by(7) {
        let key = if i < 1200 {
            format!("big/f{i:05}.bin")
        } else {
            format!("n{}/s{}/f{i}.bin", i % 5, i % 7)
        };
        let data = std::fs::read(m.p(&format!("bkt/{key}"))).expect("read");
        assert_eq!(
            sha(&data),
            sha(&pattern(i, (i as usize * 37) % 5000)),
            "{key}"
        );
        let meta = std::fs::metadata(m.p(&format!("bkt/{key}"))).expect("stat");
        assert_eq!(meta.len(), data.len() as u64);
    }
}

#[test]
fn second_read_is_a_hit_and_stats_read_whole_with_any_tool() {
    let env = Env::new();
    let data = pattern(1, 1 << 20);
    env.server.put("bkt", "video.bin", data.clone());
    let m = Mount::start(&env, &[]);
    assert_eq!(std::fs::read(m.p("bkt/video.bin")).expect("read"), data);
    assert_eq!(std::fs::read(m.p("bkt/video.bin")).expect("read"), data);
    let s = m.stats();
    assert!(s["hits"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["misses"].as_u64(), Some(1), "{s}");
    for field in [
        "hits",
        "misses",
        "hit_rate",
        "entry_count",
        "total_size",
        "max_size",
        "max_entries",
        "evictions",
        "expirations",
        "etag_validations",
        "etag_mismatches",
        "bytes_from_s3",
        "bytes_from_cache",
        "downloads_in_flight",
        "errors",
        "uptime_seconds",
    ] {
        assert!(s.get(field).is_some(), "{field} missing from {s}");
    }
    // cat and python read it whole, and ls -a lists it.
    let cat = Command::new("cat")
        .arg(m.p(".cache-stats"))
        .output()
        .expect("cat");
    let v: serde_json::Value = serde_json::from_slice(&cat.stdout).expect("cat output is JSON");
    assert!(v["hits"].is_u64());
    let py = Command::new("python3")
        .arg("-c")
        .arg("import json,sys; print(json.loads(open(sys.argv[1]).read())['misses'])")
        .arg(m.p(".cache-stats"))
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "1");
    let ls = Command::new("ls")
        .arg("-a")
        .arg(&m.path)
        .output()
        .expect("ls");
    assert!(String::from_utf8_lossy(&ls.stdout).contains(".cache-stats"));
}

#[test]
fn overwrite_is_seen_on_next_open_while_old_handle_keeps_old_bytes() {
    let env = Env::new();
    let v1 = pattern(10, 200_000);
    // A new version of another size: the kernel sees a new file (new inode), so the
    // handle opened before keeps its own page cache and bytes.
    let v2 = pattern(11, 150_000);
    env.server.put("bkt", "obj", v1.clone());
    let m = Mount::start(&env, &["--metadata-ttl", "0"]);
    let mut old = std::fs::File::open(m.p("bkt/obj")).expect("open");
    let mut head = vec![0u8; 1000];
    old.read_exact(&mut head).expect("read");
    assert_eq!(head, v1[..1000]);
    env.server.put("bkt", "obj", v2.clone());
    assert!(
        std::fs::read(m.p("bkt/obj")).expect("read new") == v2,
        "new open sees v2"
    );
    let mut rest = Vec::new();
    old.seek(SeekFrom::Start(0)).expect("seek");
    old.read_to_end(&mut rest).expect("read old");
    assert!(rest == v1, "the handle opened first keeps its version");
    assert!(m.stats()["etag_mismatches"].as_u64() >= Some(1));
}

/// The kernel still holds the name's entry (READDIRPLUS renewed it from a listing made
/// earlier) when the open finds, with a HEAD, that the object changed. The new version
/// must come as a new file: not through the old inode's size, pages or passthrough
/// backing file, which a handle still open on the old version is using.
#[test]
fn a_new_version_found_by_an_open_is_a_new_file_to_the_kernel() {
    for passthrough in ["true", "false"] {
        let env = Env::new();
        let v1 = pattern(20, 300_000);
        let v2 = pattern(21, 200_000);
        env.server.put("bkt", "obj", v1.clone());
        // Seconds: wide enough that a loaded machine still lands in the window below.
        let m = Mount::start(&env, &["--metadata-ttl", "6", "--passthrough", passthrough]);
        let t0 = Instant::now();
        assert!(std::fs::read(m.p("bkt/obj")).expect("read v1") == v1);
        wait_settled(&m);
        let mut old = std::fs::File::open(m.p("bkt/obj")).expect("open v1");
        let mut head = vec![0u8; 1000];
        old.read_exact(&mut head).expect("read v1 head");
        std::thread::sleep(Duration::from_millis(3000).saturating_sub(t0.elapsed()));
        // Answered from the listing made at t0: the kernel now keeps the entry until
        // t0 + 9 s, while what S3 said at t0 is trusted until t0 + 6 s.
        assert_eq!(std::fs::read_dir(m.p("bkt")).expect("ls").count(), 1);
        env.server.put("bkt", "obj", v2.clone());
        std::thread::sleep(Duration::from_millis(6500).saturating_sub(t0.elapsed()));
        let mut new = std::fs::File::open(m.p("bkt/obj")).expect("open v2");
        assert!(
            t0.elapsed() < Duration::from_millis(8800),
            "too slow to test what was meant: the kernel's entry may have run out"
        );
        let mut got = Vec::new();
        new.read_to_end(&mut got).expect("read v2");
        assert!(
            got == v2,
            "passthrough {passthrough}: the new open reads v2 whole"
        );
        let mut rest = Vec::new();
        old.seek(SeekFrom::Start(0)).expect("seek");
        old.read_to_end(&mut rest).expect("read v1 again");
        assert!(
            rest == v1,
            "passthrough {passthrough}: the old handle keeps v1"
        );
        // The other way round: the pages the old handle just read are not the new one's.
        got.clear();
        new.seek(SeekFrom::Start(0)).expect("seek");
        new.read_to_end(&mut got).expect("read v2 again");
        assert!(
            got == v2,
            "passthrough {passthrough}: no v1 pages reach the new handle"
        );
        let (a, b) = (old.metadata().expect("stat"), new.metadata().expect("stat"));
        assert_ne!(a.ino(), b.ino(), "a new version is a new inode");
        assert_eq!(b.len(), v2.len() as u64);
        assert_eq!(stat_u64(&m, "errors"), 0, "{}", m.stats());
    }
}

/// A file bind-mounted on its own (`docker -v /mnt/s3/cfg.yaml:/etc/cfg.yaml`) is an inode
/// the kernel reaches without a lookup, so the ESTALE retry comes back to it: it must
/// open at the new version, not fail every time.
#[test]
fn a_file_bind_mounted_on_its_own_opens_after_the_object_changes() {
    let env = Env::new();
    let v1 = pattern(22, 100_000);
    let v2 = pattern(23, 100_000);
    env.server.put("bkt", "cfg", v1.clone());
    let m = Mount::start(&env, &["--metadata-ttl", "1"]);
    assert!(std::fs::read(m.p("bkt/cfg")).expect("read v1") == v1);
    wait_settled(&m);
    let target = env.tmp.path().join("cfg-bound");
    std::fs::write(&target, b"").expect("bind target");
    let bound = Command::new("mount")
        .arg("--bind")
        .arg(m.p("bkt/cfg"))
        .arg(&target)
        .status()
        .expect("mount --bind");
    assert!(bound.success());
    struct Unbind<'a>(&'a Path);
    impl Drop for Unbind<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unbind = Unbind(&target);
    assert!(std::fs::read(&target).expect("read through the bind") == v1);
    env.server.put("bkt", "cfg", v2.clone());
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..3 {
        let got = std::fs::read(&target).expect("open through the bind after the change");
        assert!(got == v2, "the bind shows the new version");
    }
    assert!(std::fs::read(m.p("bkt/cfg")).expect("read by name") == v2);
    assert_eq!(stat_u64(&m, "errors"), 0, "{}", m.stats());
}

#[test]
fn deleted_object_is_enoent_and_writes_are_erofs() {
    let env = Env::new();
    env.server.put("bkt", "doomed", "bye");
    env.server.put("bkt", "dir/keep", "stay");
    let m = Mount::start(&env, &["--metadata-ttl", "0"]);
    assert_eq!(std::fs::read(m.p("bkt/doomed")).expect("read"), b"bye");
    env.server.delete("bkt", "doomed");
    let err = std::fs::read(m.p("bkt/doomed")).expect_err("gone");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(m.p("bkt/new"), "x"), "create");
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.p("bkt/dir/keep"))
            .map(drop),
        "open for write",
    );
    erofs(std::fs::create_dir(m.p("bkt/newdir")), "mkdir");
    erofs(std::fs::remove_file(m.p("bkt/dir/keep")), "unlink");
    erofs(
        std::fs::rename(m.p("bkt/dir/keep"), m.p("bkt/dir/moved")),
        "rename",
    );
    use std::os::unix::fs::PermissionsExt;
    erofs(
        std::fs::set_permissions(m.p("bkt/dir/keep"), std::fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    erofs(std::fs::write(m.p(".cache-stats"), "x"), "write stats");
    assert_eq!(
        std::fs::read(m.p("bkt/dir/keep")).expect("still there"),
        b"stay"
    );
}

#[test]
fn unusual_key_characters_are_served_not_mixed_up() {
    let env = Env::new();
    let keys = [
        "with space.txt",
        "ünïcødé/文件.txt",
        "percent%20literal",
        "plus+sign",
        "question?mark",
        "hash#tag",
        "semi;colon&amp",
        "quote'single",
    ];
    for (i, k) in keys.iter().enumerate() {
        env.server.put("bkt", k, format!("content of {k} #{i}"));
    }
    let m = Mount::start(&env, &[]);
    for (i, k) in keys.iter().enumerate() {
        let got = std::fs::read_to_string(m.p(&format!("bkt/{k}"))).expect(k);
        assert_eq!(got, format!("content of {k} #{i}"));
    }
}

#[test]
fn thirty_two_readers_of_a_cold_file_share_one_download() {
    let env = Env::new();
    let data = pattern(32, 8 << 20);
    env.server.put("bkt", "cold.bin", data.clone());
    let m = Mount::start(&env, &[]);
    // Listed first so every reader's open happens while the one download runs.
    assert!(m.p("bkt/cold.bin").exists());
    env.server.faults.get_rate.store(16 << 20, Ordering::SeqCst);
    let want = sha(&data);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..32)
            .map(|_| s.spawn(|| sha(&std::fs::read(m.p("bkt/cold.bin")).expect("read"))))
            .collect();
        for h in hs {
            assert_eq!(h.join().expect("reader"), want);
        }
    });
    assert_eq!(env.server.counters.gets_of("bkt", "cold.bin"), 1);
}

#[test]
fn sigterm_unmounts_cleanly() {
    let env = Env::new();
    env.server.put("bkt", "a", "a");
    let mut m = Mount::start(&env, &[]);
    assert!(is_mounted(&m.path));
    let status = m.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!is_mounted(&m.path), "mount is gone");
}

#[test]
fn background_mount_returns_when_live_and_unmount_takes_it_down() {
    let env = Env::new();
    env.server.put("bkt", "bg", "background");
    let mp = env.tmp.path().join("bgmnt");
    std::fs::create_dir_all(&mp).expect("mkdir");
    let out = mount_cmd(&env, &mp, &env.cache_dir())
        .args(["--bucket", "bkt"])
        .output()
        .expect("run");
    let guard = scopeguard(&mp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mp), "live when the command returns");
    assert_eq!(
        std::fs::read_to_string(mp.join("bg")).expect("read"),
        "background"
    );
    let st = bin().arg("unmount").arg(&mp).status().expect("unmount");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(&mp) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&mp));
    drop(guard);
}

/// Unmounts on drop, so a failing test leaves no mount behind.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

pub fn scopeguard(p: &Path) -> Unmount {
    Unmount(p.to_path_buf())
}

/// Runs `s3cachefs mount` expecting failure; returns (exit code, stderr).
fn mount_fails(env: &Env, mp: &Path, extra: &[&str], vars: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = bin();
    let endpoint = env.server.endpoint();
    let endpoint = if extra.contains(&"--endpoint-url") {
        None
    } else {
        Some(endpoint)
    };
    cmd.arg("mount").arg(mp).arg("--force-path-style");
    if let Some(e) = endpoint {
        cmd.args(["--endpoint-url", &e]);
    }
    cmd.arg("--cache-dir").arg(env.cache_dir()).args(extra);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run");
    let _guard = scopeguard(mp);
    assert!(!is_mounted(mp), "nothing mounted on failure");
    let err = String::from_utf8_lossy(&out.stderr);
    // What a person sees of a failed mount (exit 1; usage errors are clap's) is a
    // sentence or two, not the SDK's debug output.
    if out.status.code() == Some(1) {
        assert!(err.lines().count() <= 2 && err.len() < 400, "{err}");
        for debris in ["ServiceError", "Response {", "source:", "DispatchFailure"] {
            assert!(!err.contains(debris), "{err}");
        }
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_settings_and_unusable_targets_fail_with_clear_messages() {
    let env = Env::new();
    env.server.put("bkt", "x", "x");
    let mp = env.tmp.path().join("mp");
    std::fs::create_dir_all(&mp).expect("mkdir");

    let (code, err) = mount_fails(&env, &mp, &[], &[("CACHE_MAX_SIZE_MB", "abc")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("CACHE_MAX_SIZE_MB") && err.contains("whole number"),
        "{err}"
    );
    let (code, err) = mount_fails(&env, &mp, &["--cache-max-entries", "-5"], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = mount_fails(&env, &mp, &[], &[("CACHE_ENABLED", "perhaps")]);
    assert_eq!(code, 2);
    assert!(err.contains("CACHE_ENABLED"), "{err}");
    let (code, err) = mount_fails(&env, &mp, &[], &[("S3CACHEFS_ALLOW_OTHER", "perhaps")]);
    assert_eq!(code, 2);
    assert!(err.contains("--allow-other"), "{err}");

    let (code, err) = mount_fails(&env, &env.tmp.path().join("missing"), &[], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");

    let (code, err) = mount_fails(&env, &mp, &[], &[("AWS_SECRET_ACCESS_KEY", "wrong")]);
    assert_eq!(code, 1);
    assert!(err.contains("access denied"), "{err}");

    let home = env.tmp.path().join("empty-home");
    std::fs::create_dir_all(&home).expect("mkdir");
    let (code, err) = mount_fails(
        &env,
        &mp,
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("HOME", &home.display().to_string()),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("credentials"), "{err}");

    let (code, err) = mount_fails(
        &env,
        &mp,
        &[
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--max-attempts",
            "1",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");

    let (code, err) = mount_fails(&env, &mp, &["--bucket", "no-such-bucket"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");

    // A second mount on the same cache dir.
    let _first = Mount::start(&env, &[]);
    let (code, err) = mount_fails(&env, &mp, &[], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("in use by another s3cachefs process"), "{err}");
}

/// A `.cache-stats` counter; a missing or non-numeric field fails the test, so a
/// renamed counter cannot pass an `== 0` check.
pub fn stat_u64(m: &Mount, field: &str) -> u64 {
    let stats = m.stats();
    match stats[field].as_u64() {
        Some(v) => v,
        None => panic!("no counter {field:?} in .cache-stats: {stats}"),
    }
}

pub fn wait_until(cond: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_settled(m: &Mount) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stat_u64(m, "downloads_in_flight") > 0 {
        assert!(Instant::now() < deadline, "download never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hits_use_passthrough_and_the_read_handler_is_not_called() {
    let env = Env::new();
    let data = pattern(50, 5 << 20);
    env.server.put("bkt", "hit.bin", data.clone());
    let m = Mount::start(&env, &[]);
    assert!(std::fs::read(m.p("bkt/hit.bin")).expect("cold") == data);
    wait_settled(&m);
    let reads_before = stat_u64(&m, "read_requests");
    assert!(std::fs::read(m.p("bkt/hit.bin")).expect("warm") == data);
    assert_eq!(stat_u64(&m, "passthrough_opens"), 1, "{}", m.stats());
    assert_eq!(
        stat_u64(&m, "read_requests"),
        reads_before,
        "the kernel read the cache file itself"
    );
}

#[test]
fn without_passthrough_hits_serve_the_same_bytes() {
    let env = Env::new();
    let data = pattern(51, 3 << 20);
    env.server.put("bkt", "hit.bin", data.clone());
    let m = Mount::start(&env, &["--passthrough", "false"]);
    for _ in 0..3 {
        assert!(std::fs::read(m.p("bkt/hit.bin")).expect("read") == data);
        wait_settled(&m);
    }
    assert_eq!(stat_u64(&m, "passthrough_opens"), 0);
    assert!(stat_u64(&m, "hits") >= 2);
}

#[test]
fn a_slow_object_does_not_hold_up_listing_or_cached_reads() {
    let env = Env::new();
    env.server.put("bkt", "fast.txt", "quick");
    env.server.put("bkt", "slow.bin", pattern(70, 4 << 20));
    let m = Mount::start(&env, &["--read-timeout", "120"]);
    assert_eq!(
        std::fs::read(m.p("bkt/fast.txt")).expect("warm up"),
        b"quick"
    );
    wait_settled(&m);
    env.server.faults.get_rate.store(32 << 10, Ordering::SeqCst);
    let slow_path = m.p("bkt/slow.bin");
    // Several readers stuck on the slow object, more than there are FUSE threads.
    let readers: Vec<_> = (0..6)
        .map(|i| {
            let p = slow_path.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::File::open(&p).ok()?;
                let mut buf = vec![0u8; 4096];
                f.seek(SeekFrom::Start((i as u64 + 1) * 600_000)).ok()?;
                f.read(&mut buf).ok()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            std::fs::read(m.p("bkt/fast.txt")).expect("cached read"),
            b"quick"
        );
        assert!(std::fs::read_dir(m.p("bkt")).expect("ls").count() >= 2);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cached reads and listings took {:?} beside a slow object",
        started.elapsed()
    );
    env.server.faults.get_rate.store(0, Ordering::SeqCst);
    drop(m);
    for r in readers {
        let _ = r.join();
    }
}

#[test]
fn a_dead_server_gives_eio_in_bounded_time() {
    let env = Env::new();
    env.server.put("bkt", "obj", pattern(71, 1 << 20));
    let m = Mount::start(&env, &["--read-timeout", "5", "--max-attempts", "2"]);
    assert!(m.p("bkt/obj").exists());
    env.server.faults.fail(None, u64::MAX, 500);
    let started = Instant::now();
    let err = std::fs::read(m.p("bkt/obj")).expect_err("nothing to read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    env.server.faults.fail_next.store(0, Ordering::SeqCst);
}

#[test]
fn private_modes_under_a_permissive_umask_and_no_secrets_in_logs() {
    let env = Env::new();
    env.server.put("bkt", "obj", "secret-free");
    let mp = env.tmp.path().join("umask-mnt");
    std::fs::create_dir_all(&mp).expect("mkdir");
    let log = env.tmp.path().join("mount.log");
    let cmd = format!(
        "umask 000; exec '{}' mount '{}' --endpoint-url {} --force-path-style --cache-dir '{}' -vv --log-file '{}'",
        env!("CARGO_BIN_EXE_s3cachefs"),
        mp.display(),
        env.server.endpoint(),
        env.cache_dir().display(),
        log.display()
    );
    // The same clean environment as the binary gets, through a shell that sets umask.
    let mut sh = Command::new("sh");
    for (k, v) in bin().get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let out = sh.arg("-c").arg(cmd).output().expect("mount");
    let _guard = scopeguard(&mp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(mp.join("bkt/obj")).expect("read"),
        b"secret-free"
    );
    let _ = std::fs::read(mp.join("bkt/missing"));
    let stats = std::fs::read_to_string(mp.join(".cache-stats")).expect("stats");
    let st = bin().arg("unmount").arg(&mp).status().expect("unmount");
    assert!(st.success());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&env.cache_dir()), 0o700);
    let mut files = 0;
    for shard in std::fs::read_dir(env.cache_dir()).expect("dir").flatten() {
        if shard.file_type().expect("type").is_dir() {
            assert_eq!(mode(&shard.path()), 0o700, "{}", shard.path().display());
            for f in std::fs::read_dir(shard.path()).expect("shard").flatten() {
                assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
                files += 1;
            }
        }
    }
    assert!(files >= 1);
    assert_eq!(mode(&env.cache_dir().join("index.redb")), 0o600);
    assert_eq!(mode(&log), 0o600);
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(
        logs.contains("DEBUG") || logs.contains("TRACE"),
        "verbose logs were written"
    );
    for secret in [
        SECRET_KEY,
        ACCESS_KEY,
        "Signature=",
        "X-Amz-Signature",
        "Authorization",
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
        assert!(!stats.contains(secret), "{secret} appears in .cache-stats");
    }
}

#[test]
fn the_root_is_listed_at_mount_and_ls_l_gets_sizes_with_the_names() {
    let env = Env::new();
    env.server.put("bkt", "a", pattern(1, 10));
    env.server.put("bkt", "b", pattern(2, 5000));
    env.server.put("bkt", "d/x", pattern(3, 7));
    let m = Mount::start(&env, &["--bucket", "bkt", "--metadata-ttl", "60"]);
    // Listed while mounting: the first look at the root costs no LIST.
    env.server.counters.reset();
    let ls = Command::new("ls")
        .arg("-l")
        .arg(&m.path)
        .output()
        .expect("ls");
    assert!(ls.status.success());
    assert_eq!(env.server.counters.count(Kind::List), 0);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(text.contains(" 5000 ") && text.contains(" 10 "), "{text}");
    let mut sizes = BTreeSet::new();
    for e in std::fs::read_dir(&m.path).expect("read_dir").flatten() {
        let md = e.metadata().expect("metadata");
        sizes.insert((
            e.file_name().to_string_lossy().into_owned(),
            md.is_dir(),
            md.len(),
        ));
    }
    assert!(sizes.contains(&("a".into(), false, 10)), "{sizes:?}");
    assert!(sizes.contains(&("b".into(), false, 5000)), "{sizes:?}");
    assert!(
        sizes.iter().any(|(n, dir, _)| n == "d" && *dir),
        "{sizes:?}"
    );
    // No extended attributes: the kernel learns that once and stops asking (ENOTSUP).
    let path = std::ffi::CString::new(m.p("a").as_os_str().as_encoded_bytes()).expect("path");
    let name = c"user.any";
    for _ in 0..2 {
        // SAFETY: valid NUL-terminated strings; a null buffer of size 0 asks for the size.
        let r = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EOPNOTSUPP)
        );
    }
    assert_eq!(std::fs::read(m.p("b")).expect("read"), pattern(2, 5000));
}

#[test]
fn files_read_in_order_are_fetched_ahead_only_with_room_and_when_on() {
    let env = Env::new();
    for i in 0..20 {
        env.server
            .put("bkt", &format!("d/f{i:02}"), pattern(i as u64, 3000 + i));
    }
    let gets_of = |i: usize| env.server.counters.gets_of("bkt", &format!("d/f{i:02}"));
    let read = |m: &Mount, i: usize| {
        let got = std::fs::read(m.p(&format!("bkt/d/f{i:02}"))).expect("read");
        assert!(got == pattern(i as u64, 3000 + i), "f{i:02}");
    };
    {
        let m = Mount::start(&env, &[]);
        read(&m, 0);
        assert_eq!(gets_of(2), 0, "one open is no pattern");
        read(&m, 1);
        wait_until(|| gets_of(9) == 1, "f09 fetched ahead");
        wait_settled(&m);
        for i in 2..10 {
            assert_eq!(gets_of(i), 1, "f{i:02} fetched ahead");
        }
        assert_eq!(gets_of(10), 0, "8 ahead, not more");
        assert_eq!(stat_u64(&m, "prefetches"), 8);
        for i in 2..20 {
            read(&m, i);
        }
        wait_settled(&m);
        for i in 0..20 {
            assert_eq!(gets_of(i), 1, "f{i:02}: one GET, ahead or not");
        }
        drop(m);
    }
    env.server.counters.reset();
    std::fs::remove_dir_all(env.cache_dir()).expect("clear the cache");
    {
        // Room for three entries: fetching ahead would evict, so it does not happen.
        let m = Mount::start(&env, &["--cache-max-entries", "3"]);
        read(&m, 0);
        read(&m, 1);
        wait_until(|| gets_of(2) == 1, "f02 fetched ahead");
        std::thread::sleep(Duration::from_millis(300));
        wait_settled(&m);
        assert_eq!(stat_u64(&m, "evictions"), 0, "a guess never evicts");
        assert_eq!(
            stat_u64(&m, "entry_count"),
            3,
            "f00, f01 and one fetched ahead"
        );
        drop(m);
    }
    env.server.counters.reset();
    std::fs::remove_dir_all(env.cache_dir()).expect("clear the cache");
    {
        let m = Mount::start(&env, &["--readahead-files", "0"]);
        read(&m, 0);
        read(&m, 1);
        std::thread::sleep(Duration::from_millis(300));
        wait_settled(&m);
        assert_eq!(gets_of(2), 0, "off");
        assert_eq!(stat_u64(&m, "prefetches"), 0);
    }
}

#[test]
fn unmount_waits_for_the_process_and_still_works_when_it_is_stuck() {
    let env = Env::new();
    env.server.put("bkt", "obj", pattern(5, 1000));
    let mut m = Mount::start(&env, &[]);
    assert_eq!(
        std::fs::read(m.p("bkt/obj")).expect("read"),
        pattern(5, 1000)
    );
    // A stopped process answers nothing: unmount must neither hang nor find the mount busy.
    let pid = m.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let st = bin().arg("unmount").arg(&m.path).status().expect("unmount");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(st.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!is_mounted(&m.path));
    let _ = m.stop();
    // A live one: unmount returns once the process has closed the cache, so the cache
    // directory can be mounted again at once.
    let m = Mount::start(&env, &[]);
    assert_eq!(
        std::fs::read(m.p("bkt/obj")).expect("read"),
        pattern(5, 1000)
    );
    let st = bin().arg("unmount").arg(&m.path).status().expect("unmount");
    assert!(st.success());
    let gone = std::fs::read_to_string(format!("/proc/{}/stat", m.pid())).map_or(true, |s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    });
    assert!(gone, "the process has exited");
    drop(m);
    let again = Mount::start(&env, &[]);
    assert_eq!(
        stat_u64(&again, "entry_count"),
        1,
        "the entry was committed"
    );
}

#[test]
fn unmount_right_after_a_whole_read_keeps_the_download() {
    let env = Env::new();
    // Big enough that verifying it is still under way when the read returns.
    let data = pattern(6, 32 << 20);
    env.server.put("bkt", "big", data.clone());
    let m = Mount::start(&env, &["--part-size-mb", "1"]);
    assert!(std::fs::read(m.p("bkt/big")).expect("read") == data);
    let st = bin().arg("unmount").arg(&m.path).status().expect("unmount");
    assert!(st.success());
    drop(m);
    env.server.counters.reset();
    let again = Mount::start(&env, &[]);
    assert_eq!(stat_u64(&again, "entry_count"), 1, "the download was kept");
    assert!(std::fs::read(again.p("bkt/big")).expect("read") == data);
    assert_eq!(
        env.server.counters.count(Kind::Get),
        0,
        "served from the cache"
    );
}

/// Drops the kernel's dentry and inode caches machine-wide, which would add LISTs to the
/// counts other tests check: `scripts/test.sh` runs it alone, after the others.
#[test]
#[ignore = "drops the kernel's caches: run alone, as scripts/test.sh does"]
fn inodes_are_dropped_when_the_kernel_forgets_them() {
    let env = Env::new();
    for i in 0..300 {
        env.server
            .put("bkt", &format!("d/f{i:03}"), pattern(i, 100));
    }
    let log = env.tmp.path().join("forget.log");
    let m = Mount::start_logging_to(
        &env,
        &[],
        Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    let ls = Command::new("ls")
        .arg("-l")
        .arg(m.p("bkt/d"))
        .output()
        .expect("ls");
    assert!(ls.status.success());
    let held = stat_u64(&m, "inodes");
    assert!(held >= 303, "the root, bkt, d and 300 files: {held}");
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop the dentry cache");
    // FORGETs arrive as the kernel evicts its inodes.
    let started = Instant::now();
    let mut now_held = held;
    while started.elapsed() < Duration::from_secs(10) {
        now_held = stat_u64(&m, "inodes");
        if now_held <= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        now_held <= 3,
        "the root and at most bkt and d are left: {now_held}"
    );
    // The listing is made again, and every byte is right.
    env.server.counters.reset();
    for i in [0, 150, 299] {
        let got = std::fs::read(m.p(&format!("bkt/d/f{i:03}"))).expect("read");
        assert!(got == pattern(i, 100), "f{i:03}");
    }
    assert!(env.server.counters.count(Kind::List) >= 1, "listed again");
    let ls = Command::new("ls").arg(m.p("bkt/d")).output().expect("ls");
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 300);
    // Had a lookup gone uncounted, the kernel would have forgotten more than was counted.
    let text = std::fs::read_to_string(&log).expect("mount log");
    assert!(text.contains("mounted"), "the log is the mount's");
    assert!(
        !text.contains("more lookups than were counted"),
        "lookup counts fell short of the kernel's"
    );
}

#[test]
fn ls_then_cat_of_small_files_costs_one_list_and_no_head() {
    let env = Env::new();
    for i in 0..50 {
        env.server
            .put("bkt", &format!("small/f{i:02}"), pattern(i, 4096));
    }
    let m = Mount::start(&env, &["--metadata-ttl", "60"]);
    env.server.counters.reset();
    let ls = Command::new("ls")
        .arg("-l")
        .arg(m.p("bkt/small"))
        .output()
        .expect("ls");
    assert!(ls.status.success());
    for round in 0..2 {
        for i in 0..50 {
            let got = std::fs::read(m.p(&format!("bkt/small/f{i:02}"))).expect("cat");
            assert!(got == pattern(i, 4096), "round {round} f{i}");
        }
        wait_settled(&m);
    }
    let c = &env.server.counters;
    assert_eq!(
        c.count(Kind::Head),
        0,
        "no HEAD: versions come from the GETs and opens"
    );
    assert!(c.count(Kind::List) <= 2, "{} LISTs", c.count(Kind::List));
    assert_eq!(
        c.count(Kind::Get),
        50,
        "one GET per file, the second round all hits"
    );
}

#[test]
fn kill_9_during_fills_then_remount_serves_only_correct_bytes() {
    let env = Env::new();
    let objects: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            (
                format!("o{i}"),
                pattern(100 + i, (1 + i as usize % 4) << 20),
            )
        })
        .collect();
    for (k, d) in &objects {
        env.server.put("bkt", k, d.clone());
    }
    for round in 0..3u64 {
        env.server.faults.get_rate.store(8 << 20, Ordering::SeqCst);
        let mut m = Mount::start(&env, &["--cache-max-entries", "8"]);
        let readers: Vec<_> = objects
            .iter()
            .map(|(k, _)| {
                let p = m.p(&format!("bkt/{k}"));
                std::thread::spawn(move || std::fs::read(p))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + round * 200));
        m.kill9();
        for r in readers {
            let _ = r.join();
        }
        drop(m);
        env.server.faults.get_rate.store(0, Ordering::SeqCst);
        // Next start: consistent, only right bytes, nothing left in tmp/.
        let m = Mount::start(&env, &["--cache-max-entries", "8"]);
        for (k, d) in &objects {
            let got = std::fs::read(m.p(&format!("bkt/{k}"))).expect("read after crash");
            assert!(got == *d, "round {round}: {k} bytes");
        }
        wait_settled(&m);
        let s = m.stats();
        assert!(s["entry_count"].as_u64() <= Some(8), "{s}");
    }
    let tmp = std::fs::read_dir(env.cache_dir().join("tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp, 0, "no temporary files after a clean stop");
}

#[test]
fn many_open_handles_of_a_cached_file_and_o_direct_beside_them() {
    use std::os::unix::fs::OpenOptionsExt;
    let env = Env::new();
    let data = pattern(80, 2 << 20);
    env.server.put("bkt", "shared.bin", data.clone());
    let m = Mount::start(&env, &[]);
    assert!(std::fs::read(m.p("bkt/shared.bin")).expect("cold") == data);
    wait_settled(&m);
    // All open at once: the kernel requires them to share one passthrough backing file.
    let mut handles: Vec<std::fs::File> = (0..8)
        .map(|_| std::fs::File::open(m.p("bkt/shared.bin")).expect("open"))
        .collect();
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.p("bkt/shared.bin"))
        .expect("O_DIRECT open beside passthrough opens");
    // The kernel makes every open of a passthrough inode share its backing file, so this
    // one reads the complete local copy. Its buffer must be aligned, as on a disk.
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
    // SAFETY: a non-zero size; freed below with the same layout.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!buf.is_null());
    // SAFETY: buf holds 4096 bytes.
    let n = unsafe {
        libc::pread(
            std::os::fd::AsRawFd::as_raw_fd(&direct),
            buf.cast(),
            4096,
            0,
        )
    };
    // SAFETY: n bytes of buf were written; buf is freed once, with its layout.
    let got = unsafe { std::slice::from_raw_parts(buf, n.max(0) as usize) }.to_vec();
    unsafe { std::alloc::dealloc(buf, layout) };
    assert_eq!(
        n,
        4096,
        "O_DIRECT read: {}",
        std::io::Error::last_os_error()
    );
    assert!(got == data[..4096]);
    for f in handles.iter_mut() {
        let mut got = Vec::new();
        f.read_to_end(&mut got).expect("read");
        assert!(got == data);
    }
    assert_eq!(stat_u64(&m, "errors"), 0);
}

/// numpy.memmap, safetensors and Python's mmap map files MAP_SHARED. A file still
/// downloading is opened direct_io (with passthrough on), which the kernel maps only when
/// asked to allow it; and while such a map lives, the inode is in caching mode, where a
/// passthrough open would fail with EIO.
#[test]
fn a_shared_mmap_works_while_downloading_and_opens_beside_it_still_work() {
    use std::os::fd::AsRawFd;
    let env = Env::new();
    let data = pattern(81, 3 << 20);
    env.server.put("bkt", "weights.bin", data.clone());
    let m = Mount::start(&env, &[]);
    let mapped = std::fs::File::open(m.p("bkt/weights.bin")).expect("open cold");
    // SAFETY: a fresh read-only mapping of the whole file, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            data.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            mapped.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is data.len() bytes long and lives until munmap below.
    let view = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), data.len()) };
    assert!(view == &data[..], "the mapping shows the object");
    wait_settled(&m);
    // Complete now, and opened again while the map lives.
    let beside = std::fs::read(m.p("bkt/weights.bin")).expect("an open beside the map");
    assert!(beside == data);
    // SAFETY: unmapping what was mapped above.
    assert_eq!(unsafe { libc::munmap(ptr, data.len()) }, 0);
    drop(mapped);
    assert!(std::fs::read(m.p("bkt/weights.bin")).expect("read") == data);
    assert_eq!(stat_u64(&m, "passthrough_opens"), 1, "{}", m.stats());
    assert_eq!(stat_u64(&m, "errors"), 0);
}

#[test]
fn the_mount_is_private_unless_allow_other() {
    let env = Env::new();
    env.server.put("bkt", "obj", "mine");
    let probe = |m: &Mount| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ls"])
            .arg(m.p("bkt"))
            .output()
            .expect("setpriv")
    };
    let m = Mount::start(&env, &[]);
    let out = probe(&m);
    assert!(!out.status.success(), "another user cannot look inside");
    drop(m);
    let m = Mount::start(&env, &["--allow-other"]);
    let out = probe(&m);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("obj"));
}

#[test]
fn a_cache_dir_that_vanishes_leaves_the_mount_working() {
    let env = Env::new();
    env.server.put("bkt", "a", pattern(90, 300_000));
    env.server.put("bkt", "b", pattern(91, 300_000));
    let m = Mount::start(&env, &[]);
    assert!(std::fs::read(m.p("bkt/a")).expect("a") == pattern(90, 300_000));
    wait_settled(&m);
    std::fs::remove_dir_all(env.cache_dir()).expect("rm -rf the cache dir");
    for _ in 0..3 {
        assert!(std::fs::read(m.p("bkt/b")).expect("b, uncached") == pattern(91, 300_000));
        assert!(std::fs::read(m.p("bkt/a")).expect("a") == pattern(90, 300_000));
    }
}
