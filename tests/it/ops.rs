//! Operating it: `s3cachefs stats`, `clear` and `warm` against a live mount and a bare
//! cache directory, and a mount from an fstab-style `mount.fuse3` call.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Env, pattern};
use crate::mount::{Mount, Unmount, bin, is_mounted, mount_cmd};

/// Runs `s3cachefs ARGS` to completion.
fn run(args: &[&str], extra: &[&Path]) -> Output {
    let mut c = bin();
    c.args(args).args(extra);
    c.output().expect("run s3cachefs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("stdout is JSON")
}

fn cache_dir_arg(env: &Env) -> String {
    env.cache_dir().display().to_string()
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

#[test]
fn stats_of_a_live_mount_and_of_a_bare_cache_dir_agree_with_cache_stats() {
    let env = Env::new();
    env.server.put("bkt", "a.bin", pattern(1, 300_000));
    env.server.put("bkt", "b.bin", pattern(2, 5_000));
    let mut m = Mount::start(&env, &[]);
    for _ in 0..2 {
        std::fs::read(m.p("bkt/a.bin")).expect("read a");
    }
    std::fs::read(m.p("bkt/b.bin")).expect("read b");
    wait_entries(&m.path, 2);
    let file = m.stats();

    let live = json(&run(&["stats", "--json"], &[&m.path]));
    for f in [
        "hits",
        "misses",
        "entry_count",
        "total_size",
        "max_size",
        "max_entries",
        "evictions",
        "bytes_from_s3",
        "bytes_from_cache",
    ] {
        assert_eq!(live[f], file[f], "{f}: {live} vs {file}");
    }
    assert_eq!(n(&live, "entry_count"), 2);
    assert_eq!(n(&live, "total_size"), 305_000);

    // Any path in the mount names it.
    let human = ok(&run(&["stats"], &[&m.p("bkt")]));
    assert!(human.contains("hit rate"), "{human}");
    // One read of a.bin was a hit: "1 hit", singular.
    assert_eq!(n(&file, "hits"), 1, "{file}");
    assert!(
        human.contains(&format!("(1 hit, {} misses)", n(&file, "misses"))),
        "{human}"
    );
    assert!(human.contains("2 of 200"), "{human}");
    assert!(human.contains("bytes saved"), "{human}");

    // The cache directory of a live mount: the mount is asked.
    let via_dir = json(&run(
        &["stats", "--json", "--cache-dir", &cache_dir_arg(&env)],
        &[],
    ));
    assert_eq!(via_dir["entry_count"], file["entry_count"], "{via_dir}");
    assert_eq!(via_dir["misses"], file["misses"], "{via_dir}");

    let last = m.stats();
    assert!(m.stop().success());

    // Nothing mounted: the index on disk says the same about entries and bytes.
    let bare = json(&run(
        &["stats", "--json", "--cache-dir", &cache_dir_arg(&env)],
        &[],
    ));
    for f in ["entry_count", "total_size", "max_size", "max_entries"] {
        assert_eq!(bare[f], last[f], "{f}: {bare} vs {last}");
    }
    assert_eq!(bare["mounted"], Value::Bool(false));
    assert_eq!(bare["clean_shutdown"], Value::Bool(true));
    assert!(bare.get("hits").is_none(), "no live counters: {bare}");
    let human = ok(&run(&["stats", "--cache-dir", &cache_dir_arg(&env)], &[]));
    assert!(human.contains("(not mounted)"), "{human}");
    assert!(human.contains("2 of 200"), "{human}");

    // A directory that is no cache is named as such, and left untouched.
    let other = env.tmp.path().join("not-a-cache");
    std::fs::create_dir(&other).expect("mkdir");
    let out = run(&["stats", "--cache-dir"], &[&other]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an s3cachefs cache directory"));
    assert_eq!(std::fs::read_dir(&other).expect("ls").count(), 0);
    // A path outside any mount.
    let out = run(&["stats"], &[&other]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in an s3cachefs mount"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn clear_on_a_live_mount_empties_it_while_an_open_handle_keeps_its_bytes() {
    let env = Env::new();
    let data = pattern(7, 2 << 20);
    env.server.put("bkt", "big.bin", data.clone());
    let small = pattern(8, 64 << 10);
    env.server.put("bkt", "small.bin", small.clone());
    let mut m = Mount::start(&env, &[]);
    assert!(std::fs::read(m.p("bkt/small.bin")).expect("read") == small);
    let mut open = std::fs::File::open(m.p("bkt/big.bin")).expect("open");
    let mut head = vec![0u8; 4096];
    open.read_exact(&mut head).expect("read head");
    assert_eq!(head, data[..4096]);
    // Let the background fill (if any) land, so there is a cache file to remove.
    wait_entries(&m.path, 2);

    let out = ok(&run(&["clear"], &[&m.path]));
    assert!(out.contains("cleared 2 entries"), "{out}");
    let s = m.stats();
    assert_eq!((n(&s, "entry_count"), n(&s, "total_size")), (0, 0), "{s}");
    let files = walk_files(&env.cache_dir());
    assert!(files.is_empty(), "cache files left: {files:?}");

    // The handle opened before reads on, from where it was and from the start.
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).expect("read rest");
    assert!(rest == data[4096..], "rest of the old handle");
    open.seek(SeekFrom::Start(1 << 20)).expect("seek");
    let mut mid = vec![0u8; 1000];
    open.read_exact(&mut mid).expect("read mid");
    assert_eq!(mid, data[1 << 20..(1 << 20) + 1000]);
    drop(open);

    // A new open is a miss again, and fills the cache again.
    let misses = n(&m.stats(), "misses");
    assert!(std::fs::read(m.p("bkt/big.bin")).expect("reread") == data);
    assert_eq!(n(&m.stats(), "misses"), misses + 1);
    wait_entries(&m.path, 1);

    // By cache directory while mounted: the mount does it.
    let out = ok(&run(&["clear", "--cache-dir", &cache_dir_arg(&env)], &[]));
    assert!(out.contains("the mount at"), "{out}");
    assert_eq!(n(&m.stats(), "entry_count"), 0);

    // Not mounted: the directory is opened and cleared here.
    std::fs::read(m.p("bkt/small.bin")).expect("read");
    wait_entries(&m.path, 1);
    assert!(m.stop().success());
    let out = ok(&run(&["clear", "--cache-dir", &cache_dir_arg(&env)], &[]));
    assert!(
        out.contains("cleared 1 entry ") && out.contains("not mounted"),
        "{out}"
    );
    let bare = json(&run(
        &["stats", "--json", "--cache-dir", &cache_dir_arg(&env)],
        &[],
    ));
    assert_eq!(n(&bare, "entry_count"), 0, "{bare}");
}

/// Waits until the mount at `root` has `want` cache entries: a read can return before
/// its download is committed to the cache.
fn wait_entries(root: &Path, want: u64) {
    let stats = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(".cache-stats")).expect("stats"))
            .expect("json")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while n(&stats(), "entry_count") != want {
        assert!(
            Instant::now() < deadline,
            "expected {want} entries: {}",
            stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Files under the cache's shard directories.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).expect("ls cache").flatten() {
        let name = shard.file_name().to_string_lossy().to_string();
        if name.len() == 2 && shard.path().is_dir() {
            out.extend(
                std::fs::read_dir(shard.path())
                    .expect("ls shard")
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    out
}

#[test]
fn warm_then_read_is_a_hit() {
    let env = Env::new();
    for i in 0..5u64 {
        env.server
            .put("bkt", &format!("dir/f{i}"), pattern(i, 50_000 + i as usize));
        env.server
            .put("bkt", &format!("s3dir/g{i}"), pattern(10 + i, 20_000));
    }
    env.server.put("bkt", "dir.bak", "not under dir/");
    let m = Mount::start(&env, &[]);

    // Paths in the mount: read through it.
    let out = ok(&run(&["warm"], &[&m.p("bkt/dir")]));
    assert!(out.contains("warmed 5 of 5 objects"), "{out}");
    wait_entries(&m.path, 5);
    let s = m.stats();
    let (hits, misses) = (n(&s, "hits"), n(&s, "misses"));
    for i in 0..5u64 {
        let got = std::fs::read(m.p(&format!("bkt/dir/f{i}"))).expect("read");
        assert!(got == pattern(i, 50_000 + i as usize));
    }
    let s = m.stats();
    assert_eq!(n(&s, "hits"), hits + 5, "{s}");
    assert_eq!(n(&s, "misses"), misses, "{s}");

    // s3:// URLs into the live mount's cache, through its control socket.
    let out = ok(&run(
        &[
            "warm",
            "--cache-dir",
            &cache_dir_arg(&env),
            "s3://bkt/s3dir",
        ],
        &[],
    ));
    assert!(out.contains("warmed 5 of 5 objects"), "{out}");
    assert!(out.contains("5 fetched from S3"), "{out}");
    assert_eq!(n(&m.stats(), "entry_count"), 10);
    let misses = n(&m.stats(), "misses");
    for i in 0..5u64 {
        let got = std::fs::read(m.p(&format!("bkt/s3dir/g{i}"))).expect("read");
        assert!(got == pattern(10 + i, 20_000));
    }
    assert_eq!(n(&m.stats(), "misses"), misses, "{}", m.stats());
    // Warming again finds them cached.
    let out = ok(&run(
        &[
            "warm",
            "--cache-dir",
            &cache_dir_arg(&env),
            "s3://bkt/s3dir/",
        ],
        &[],
    ));
    assert!(out.contains("5 already cached"), "{out}");
}

#[test]
fn warm_says_what_does_not_fit_and_warms_without_a_mount() {
    let env = Env::new();
    for i in 0..5u64 {
        env.server
            .put("bkt", &format!("d/f{i}"), pattern(i, 10_000));
    }
    env.server.put("bkt", "huge", pattern(9, 2 << 20));
    let mut m = Mount::start(
        &env,
        &["--cache-max-entries", "3", "--cache-max-size-mb", "1"],
    );
    let out = run(&["warm"], &[&m.p("bkt/d"), &m.p("bkt/huge")]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("do not fit"), "{stderr}");
    assert!(stdout.contains("warmed 3 of 6 objects"), "{stdout}");
    assert!(stdout.contains("1 larger than the whole cache"), "{stdout}");
    assert!(stdout.contains("left out: 2 objects"), "{stdout}");
    wait_entries(&m.path, 3);
    assert!(m.stop().success());

    // No mount: the cache is opened here, with the S3 settings given.
    let other = env.tmp.path().join("cache2");
    let out = run(
        &[
            "warm",
            "s3://bkt/d",
            "--endpoint-url",
            &env.server.endpoint(),
            "--force-path-style",
            "--cache-dir",
        ],
        &[&other],
    );
    let stdout = ok(&out);
    assert!(stdout.contains("not mounted"), "{stdout}");
    assert!(stdout.contains("5 fetched from S3"), "{stdout}");
    let bare = json(&run(&["stats", "--json", "--cache-dir"], &[&other]));
    assert_eq!(n(&bare, "entry_count"), 5, "{bare}");
    assert_eq!(n(&bare, "total_size"), 50_000, "{bare}");

    // A bad URL is refused.
    let out = run(&["warm", "s3://", "--cache-dir"], &[&other]);
    assert!(!out.status.success());
}

#[test]
fn fstab_style_mount_through_mount_fuse3() {
    let helper = ["/usr/sbin/mount.fuse3", "/sbin/mount.fuse3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(helper) = helper else {
        eprintln!("mount.fuse3 is not installed: skipping the fstab end-to-end test");
        return;
    };
    let env = Env::new();
    env.server
        .put("bkt", "via/fstab.txt", "mounted from an fstab line");
    let mp = env.tmp.path().join("fstab-mnt");
    std::fs::create_dir_all(&mp).expect("mkdir");
    let _guard = Unmount(mp.clone());
    // mount.fuse3 runs `s3cachefs bkt MOUNTPOINT -o ...` found on PATH: put the binary
    // under test first.
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_s3cachefs"));
    let path = format!(
        "{}:{}",
        exe.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let opts = format!(
        "rw,_netdev,nofail,defaults,endpoint_url={},force_path_style,cache_dir={},\
         cache_max_size_mb=100,allow_other,x-systemd.automount",
        env.server.endpoint(),
        env.cache_dir().display()
    );
    // The same environment as the tests' `s3cachefs` commands (test credentials, nothing
    // from the caller's AWS setup).
    let mut cmd = Command::new(helper);
    for (k, v) in bin().get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd
        .env("PATH", path)
        .arg("s3cachefs#bkt")
        .arg(&mp)
        .args(["-o", &opts])
        .output()
        .expect("run mount.fuse3");
    assert!(
        out.status.success(),
        "mount.fuse3 failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mp), "mounted when mount.fuse3 returns");
    assert_eq!(
        std::fs::read_to_string(mp.join("via/fstab.txt")).expect("read"),
        "mounted from an fstab line"
    );
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(mp.join(".cache-stats")).expect("stats"))
            .expect("json");
    assert_eq!(n(&stats, "max_size"), 100 << 20, "{stats}");
    wait_entries(&mp, 1);
    // The mount is ours to operate like any other.
    let out = ok(&run(&["clear"], &[&mp]));
    assert!(out.contains("cleared 1 entry "), "{out}");
    ok(&run(&["unmount"], &[&mp]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(&mp) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&mp));
}

/// Runs `s3cachefs ARGS` expecting it to exit with `code`; returns its stderr.
fn fails(args: &[&str], extra: &[&Path], code: i32) -> String {
    let out = run(args, extra);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn contradicting_flags_negative_numbers_and_bad_endpoints_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).expect("mkdir");
    let mp = mp.to_str().expect("utf-8 path");
    // An endpoint nothing listens on: were a command accepted, it would fail at once
    // with exit 1 rather than 2.
    let mount = |extra: &[&str]| {
        let mut args = vec![
            "mount",
            mp,
            "--foreground",
            "--max-attempts",
            "1",
            "--endpoint-url",
            "http://127.0.0.1:9",
        ];
        args.extend_from_slice(extra);
        fails(&args, &[], 2)
    };
    for (extra, first, second) in [
        (
            &["--no-cache", "--cache-enabled", "true"][..],
            "--no-cache",
            "--cache-enabled true",
        ),
        (
            &["--cache-enabled", "yes", "--no-cache"][..],
            "--no-cache",
            "--cache-enabled yes",
        ),
        (
            &["--validate-etag", "true", "--no-validate-etag"][..],
            "--no-validate-etag",
            "--validate-etag true",
        ),
    ] {
        let err = mount(extra);
        assert!(
            err.contains(first) && err.contains(second) && err.contains("cannot be used together"),
            "{extra:?}: {err}"
        );
    }
    // Both saying the same is no contradiction; the variable gives way to the switch.
    let out = run(
        &[
            "mount",
            mp,
            "--foreground",
            "--max-attempts",
            "1",
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--no-cache",
            "--cache-enabled",
            "false",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let mut c = bin();
    c.args(["mount", mp, "--foreground", "--max-attempts", "1"])
        .args(["--endpoint-url", "http://127.0.0.1:9", "--no-cache"])
        .env("CACHE_ENABLED", "true");
    assert_eq!(c.output().expect("run").status.code(), Some(1));

    // Negative numbers reach our checks, which name the flag.
    for (flag, value) in [
        ("--cache-max-size-mb", "-5"),
        ("--cache-max-entries", "-1"),
        ("--cache-ttl-hours", "-0.5"),
        ("--read-timeout", "-3"),
        ("--uid", "-1"),
    ] {
        let err = mount(&[flag, value]);
        assert!(
            err.contains(flag) && err.contains(&format!("\"{value}\"")),
            "{flag}: {err}"
        );
        assert!(!err.contains("unexpected argument"), "{err}");
    }
    let err = fails(&["warm", "--jobs", "-2", "s3://bkt"], &[], 2);
    assert!(err.contains("--jobs") && err.contains("\"-2\""), "{err}");
    let err = fails(&["stats", "--cache-max-entries", "-2"], &[], 2);
    assert!(err.contains("--cache-max-entries"), "{err}");

    // An endpoint that is no URL says so, whichever command and source.
    for bad in ["notaurl", "127.0.0.1:9000", "http://", "ftp://host"] {
        let out = run(&["mount", mp, "--foreground", "--endpoint-url", bad], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("--endpoint-url") && err.contains("http://"),
            "{bad}: {err}"
        );
        assert!(!err.contains("region"), "{bad}: {err}");
    }
    let err = fails(&["warm", "s3://bkt", "--endpoint-url", "notaurl"], &[], 2);
    assert!(err.contains("--endpoint-url"), "{err}");
    let mut c = bin();
    c.args(["mount", mp, "--foreground"])
        .env("AWS_ENDPOINT_URL", "notaurl");
    let out = c.output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWS_ENDPOINT_URL"));

    // stats and clear take a mountpoint or a cache directory, not both.
    for cmd in ["stats", "clear"] {
        let err = fails(&[cmd, mp, "--cache-dir", mp], &[], 2);
        assert!(
            err.contains("MOUNTPOINT") && err.contains("--cache-dir"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn an_fstab_value_error_names_the_option_as_written_there() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).expect("mkdir");
    // As mount.fuse3 runs the helper for an fstab line.
    let helper = |opts: &str| {
        let out = bin()
            .arg("bkt")
            .arg(&mp)
            .args(["-o", opts])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{opts}: {err}");
        err
    };
    let err = helper("rw,endpoint_url=http://127.0.0.1:9,cache_max_size_mb=abc");
    assert!(
        err.contains("cache_max_size_mb") && err.contains("\"abc\""),
        "{err}"
    );
    assert!(!err.contains("--cache-max-size-mb"), "{err}");
    let err = helper("endpoint_url=http://127.0.0.1:9,cache_max_entries=-3");
    assert!(
        err.contains("cache_max_entries") && !err.contains("--"),
        "{err}"
    );
    let err = helper("endpoint_url=notaurl");
    assert!(err.contains("endpoint_url") && !err.contains("--"), "{err}");
    let err = helper("endpoint_url=http://127.0.0.1:9,no_cache,cache_enabled=true");
    assert!(
        err.contains("no_cache") && err.contains("cache_enabled=true"),
        "{err}"
    );
    // A value from the environment is still named by its variable.
    let out = bin()
        .arg("bkt")
        .arg(&mp)
        .args(["-o", "endpoint_url=http://127.0.0.1:9"])
        .env("CACHE_MAX_ENTRIES", "lots")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CACHE_MAX_ENTRIES"));
}

#[test]
fn stats_clear_and_warm_show_their_warnings_and_take_v() {
    let env = Env::new();
    env.server.put("bkt", "a", pattern(1, 1000));
    let dir = env.tmp.path().join("cache2");
    let out = run(
        &[
            "warm",
            "s3://bkt",
            "--endpoint-url",
            &env.server.endpoint(),
            "--force-path-style",
            "--cache-dir",
        ],
        &[&dir],
    );
    ok(&out);
    // A damaged index is set aside with a warning, which the user must see.
    std::fs::write(dir.join("index.redb"), b"not an index").expect("damage the index");
    let out = run(&["clear", "--cache-dir"], &[&dir]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARN") && err.contains("cache index unreadable"),
        "{err}"
    );
    // Only warnings by default; -v and VERBOSE say more, as for mount.
    let out = run(&["stats", "--cache-dir"], &[&dir]);
    assert!(!String::from_utf8_lossy(&ok_err(&out)).contains("INFO"));
    let out = run(&["stats", "-v", "--cache-dir"], &[&dir]);
    ok(&out);
    let mut c = bin();
    c.args(["stats", "--cache-dir"])
        .arg(&dir)
        .env("VERBOSE", "maybe");
    let out = c.output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VERBOSE"));
}

/// The stderr of a command that succeeded.
fn ok_err(out: &Output) -> Vec<u8> {
    ok(out);
    out.stderr.clone()
}

/// Waits until `file` holds `text`: a mount logs some lines only once the kernel talks
/// to it.
fn wait_for_log(file: &Path, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(file).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {text:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn with_the_cache_off_stats_clear_warm_and_the_log_say_so() {
    let env = Env::new();
    let data = pattern(3, 10_000);
    env.server.put("bkt", "a.bin", data.clone());
    let log = env.tmp.path().join("mount.log");
    let m = Mount::start_logging_to(
        &env,
        &["--no-cache"],
        Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    assert!(std::fs::read(m.p("bkt/a.bin")).expect("read") == data);

    let text = wait_for_log(&log, "read path:");
    assert!(
        text.contains("read path: straight from S3 (the cache is off"),
        "{text}"
    );
    assert!(!text.contains("passthrough"), "{text}");

    let human = ok(&run(&["stats"], &[&m.path]));
    assert!(
        human.contains("off: every read goes straight to S3"),
        "{human}"
    );
    assert!(
        !human.contains("500.0 MiB") && !human.contains("hit rate"),
        "{human}"
    );
    assert!(human.contains("from S3"), "{human}");
    // The counters are still there for those who want them.
    let doc = json(&run(&["stats", "--json"], &[&m.path]));
    assert_eq!(doc["enabled"], Value::Bool(false), "{doc}");
    assert_eq!(n(&doc, "bytes_from_s3"), 10_000, "{doc}");

    // Nothing to clear is no failure.
    let out = ok(&run(&["clear"], &[&m.path]));
    assert!(
        out.contains("nothing to clear") && out.contains("cache off"),
        "{out}"
    );

    // Warming would keep nothing: said, and a failure.
    let out = run(&["warm"], &[&m.p("bkt/a.bin")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("cache off"), "{stdout}");
    assert!(!stdout.contains("fetched from S3"), "{stdout}");
    assert!(stderr.contains("1 path could not be warmed"), "{stderr}");
}

#[test]
fn mounting_over_a_non_empty_directory_warns_naming_it() {
    let env = Env::new();
    env.server.put("bkt", "x", "x");
    // Foreground: a WARN line in the log (its stderr).
    let fg = env.tmp.path().join("mnt");
    std::fs::create_dir_all(&fg).expect("mkdir");
    std::fs::write(fg.join("left-behind.txt"), "mine").expect("write");
    let log = env.tmp.path().join("mount.log");
    let mut m = Mount::start_logging_to(
        &env,
        &[],
        Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    let text = wait_for_log(&log, "not empty");
    let line = text
        .lines()
        .find(|l| l.contains("not empty"))
        .expect("the warning");
    assert!(
        line.contains("WARN") && line.contains(&fg.display().to_string()),
        "{line}"
    );
    assert!(m.stop().success());
    assert!(
        fg.join("left-behind.txt").exists(),
        "still there once unmounted"
    );

    // Background: said on the command's stderr too (the log is a file by then).
    let bg = env.tmp.path().join("bg");
    std::fs::create_dir_all(&bg).expect("mkdir");
    std::fs::write(bg.join("left-behind.txt"), "mine").expect("write");
    let _guard = Unmount(bg.clone());
    let mount_bg = || {
        mount_cmd(&env, &bg, &env.cache_dir())
            .output()
            .expect("run")
    };
    let out = mount_bg();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains(&format!("{} is not empty", bg.display())),
        "{stderr}"
    );
    ok(&run(&["unmount"], &[&bg]));
    // An empty directory: no warning.
    std::fs::remove_file(bg.join("left-behind.txt")).expect("rm");
    let out = mount_bg();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&run(&["unmount"], &[&bg]));
}

/// Kills its children on drop, so a failing test leaves no process holding a mount.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn unmount_says_what_is_not_mounted_and_who_keeps_a_mount_busy() {
    let env = Env::new();
    env.server.put("bkt", "held.txt", "held open");
    let plain = env.tmp.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir");
    for p in [plain.clone(), env.tmp.path().join("missing")] {
        let err = fails(&["unmount"], &[&p], 1);
        assert!(
            err.contains(&format!("{} is not mounted", p.display())),
            "{err}"
        );
        assert!(
            !err.contains("fusermount3") && !err.contains("Invalid argument"),
            "{err}"
        );
    }

    let m = Mount::start(&env, &[]);
    let sleep = || {
        let mut c = Command::new("sleep");
        c.arg("60");
        c
    };
    let mut holders = Children(Vec::new());
    // One has its working directory in the mount, one a file of it open.
    holders
        .0
        .push(sleep().current_dir(m.p("bkt")).spawn().expect("sleep"));
    let file = std::fs::File::open(m.p("bkt/held.txt")).expect("open");
    holders.0.push(sleep().stdin(file).spawn().expect("sleep"));
    let err = fails(&["unmount"], &[&m.path], 1);
    assert!(
        err.starts_with(&format!("s3cachefs: {} is busy", m.path.display())),
        "{err}"
    );
    for c in &holders.0 {
        assert!(err.contains(&format!("{} (sleep)", c.id())), "{err}");
    }
    assert!(!err.contains("fusermount3"), "{err}");
    assert!(is_mounted(&m.path), "still mounted");

    drop(holders);
    ok(&run(&["unmount"], &[&m.path]));
    assert!(!is_mounted(&m.path));
}

#[test]
fn stats_and_clear_name_the_path_given_when_it_is_no_mount() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(tmp.path().join("plain")).expect("mkdir");
    for cmd in ["stats", "clear"] {
        let out = bin()
            .args([cmd, "plain"])
            .current_dir(tmp.path())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("plain is not in an s3cachefs mount"),
            "{cmd}: {err}"
        );
        // Not the root of the filesystem it found above the path.
        assert!(!err.contains(".cache-stats at"), "{cmd}: {err}");
    }
}

#[test]
fn warm_warms_every_good_path_and_reports_each_bad_one() {
    let env = Env::new();
    for i in 0..3u64 {
        env.server.put("bkt", &format!("d/f{i}"), pattern(i, 5_000));
    }
    env.server.put("bkt", "g", pattern(9, 5_000));
    let m = Mount::start(&env, &[]);
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let missing = m.p("bkt/nope");
    let out = run(
        &["warm"],
        &[
            &m.p("bkt/d"),
            &missing,
            &outside,
            &m.p("bkt/g"),
            Path::new("s3://"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("warmed 4 of 4 objects"), "{stdout}");
    for bad in [
        format!("failed: {}: No such file", missing.display()),
        format!("failed: {} is not in an s3cachefs mount", outside.display()),
        "failed: s3://: expected s3://BUCKET".to_string(),
    ] {
        assert!(stdout.contains(&bad), "{bad}\n{stdout}");
    }
    assert!(stderr.contains("3 paths could not be warmed"), "{stderr}");
    wait_entries(&m.path, 4);
}

#[test]
fn counts_of_one_are_singular() {
    let env = Env::new();
    env.server.put("bkt", "one", pattern(4, 3_000));
    let m = Mount::start(&env, &[]);
    for _ in 0..2 {
        std::fs::read(m.p("bkt/one")).expect("read");
    }
    wait_entries(&m.path, 1);
    let human = ok(&run(&["stats"], &[&m.path]));
    assert!(human.contains("(1 hit, 1 miss)"), "{human}");
    let out = ok(&run(&["clear"], &[&m.path]));
    assert!(out.contains("cleared 1 entry "), "{out}");
    let out = ok(&run(&["warm"], &[&m.p("bkt/one")]));
    assert!(out.contains("warmed 1 of 1 object "), "{out}");
}
