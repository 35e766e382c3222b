//! Nothing on disk or on the wire is trusted: a cache directory someone else controls is
//! refused, every wait on S3 ends within `--read-timeout`, a lost index is rebuilt from
//! the files within the limits, a changed cache file is caught, and an odd key does not
//! take its directory down.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{Env, pattern};
use crate::mount::{Mount, bin, is_mounted, mount_cmd, stat_u64, wait_settled, wait_until};

/// Regular files in the shard folders of a cache dir (the cached objects), with sizes.
pub fn cached_files(cache_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(top) = std::fs::read_dir(cache_dir) else {
        return out;
    };
    for shard in top.flatten() {
        let name = shard.file_name().to_string_lossy().into_owned();
        let is_shard = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_shard || !shard.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(md) = f.metadata()
                && md.is_file()
            {
                out.push((f.path(), md.len()));
            }
        }
    }
    out
}

fn cached_bytes(cache_dir: &Path) -> u64 {
    cached_files(cache_dir).iter().map(|(_, n)| n).sum()
}

/// A directory of victim files root could be tricked into writing, deleting or chmodding.
struct Victims {
    dir: PathBuf,
}

impl Victims {
    fn plant(root: &Path) -> Victims {
        let dir = root.join("victim");
        std::fs::create_dir_all(dir.join("dirA")).expect("victim dirs");
        std::fs::create_dir_all(dir.join("shard00")).expect("victim dirs");
        std::fs::write(dir.join("passwd"), "root:x:0:0\n").expect("victim");
        std::fs::write(dir.join("dirA/precious"), "keep me").expect("victim");
        std::fs::write(dir.join("logtarget"), "").expect("victim");
        for d in ["dirA", "shard00"] {
            std::fs::set_permissions(dir.join(d), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        Victims { dir }
    }

    /// Links in `cache` pointing at every victim, as the attacker of the issue planted.
    fn link_from(&self, cache: &Path) {
        for (name, target) in [
            (".lock", "passwd"),
            ("tmp", "dirA"),
            ("00", "shard00"),
            ("s3cachefs.log", "logtarget"),
        ] {
            std::os::unix::fs::symlink(self.dir.join(target), cache.join(name)).expect("symlink");
        }
    }

    fn assert_untouched(&self) {
        let read = |p: &str| std::fs::read_to_string(self.dir.join(p)).expect("victim file");
        assert_eq!(read("passwd"), "root:x:0:0\n", "passwd overwritten");
        assert_eq!(read("dirA/precious"), "keep me", "dirA emptied");
        assert_eq!(read("logtarget"), "", "log written through a link");
        for d in ["dirA", "shard00"] {
            let mode = std::fs::metadata(self.dir.join(d)).expect("victim").mode() & 0o777;
            assert_eq!(mode, 0o755, "{d} chmodded");
        }
    }
}

/// Runs `mount` (background unless `extra` says otherwise) and expects it to fail.
fn mount_refused(env: &Env, cache: &Path, extra: &[&str]) -> (i32, String) {
    let mp = env.tmp.path().join("mnt");
    std::fs::create_dir_all(&mp).expect("mountpoint");
    let out = mount_cmd(env, &mp, cache)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run mount");
    if is_mounted(&mp) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mp)
            .status();
        panic!("mounted on an untrusted cache dir");
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_cache_dir_someone_else_controls_is_refused_and_nothing_it_points_at_is_touched() {
    let env = Env::new();
    env.server.put("bkt", "hello.txt", "hello");
    let victims = Victims::plant(env.tmp.path());

    // Another user's world-writable directory full of links (run as root, as in the
    // report: root must not follow them).
    let evil = env.tmp.path().join("evil");
    std::fs::create_dir(&evil).expect("mkdir");
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    victims.link_from(&evil);
    std::os::unix::fs::lchown(&evil, Some(65534), Some(65534)).expect("chown");
    for extra in [&[][..], &["--foreground"][..]] {
        let (code, err) = mount_refused(&env, &evil, extra);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("refusing cache directory"), "{err}");
        assert!(err.contains("owned by uid 65534"), "{err}");
        victims.assert_untouched();
    }
    assert_eq!(
        std::fs::metadata(&evil).expect("evil").mode() & 0o777,
        0o777,
        "someone else's directory is not chmodded"
    );

    // Our own directory with a link planted in it is refused too, naming the link.
    let ours = env.tmp.path().join("ours");
    std::fs::create_dir(&ours).expect("mkdir");
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    victims.link_from(&ours);
    for extra in [&[][..], &["--foreground"][..]] {
        let (code, err) = mount_refused(&env, &ours, extra);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("is a symbolic link"), "{err}");
        victims.assert_untouched();
    }

    // And the cache dir itself as a link to somewhere else.
    let linked = env.tmp.path().join("linked");
    std::os::unix::fs::symlink(victims.dir.join("dirA"), &linked).expect("symlink");
    let (code, err) = mount_refused(&env, &linked, &["--foreground"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    victims.assert_untouched();

    // A shard dir of someone else inside a cache that is otherwise ours: refused, so
    // their file under a key's name is never served.
    let shared = env.tmp.path().join("shared");
    {
        let m = Mount::start_with_cache(&env, &shared, &[]);
        assert_eq!(std::fs::read(m.p("bkt/hello.txt")).expect("read"), b"hello");
        wait_settled(&m);
    }
    let (file, _) = cached_files(&shared).pop().expect("a cached file");
    let shard = file.parent().expect("shard").to_path_buf();
    std::os::unix::fs::lchown(&shard, Some(65534), None).expect("chown");
    let (code, err) = mount_refused(&env, &shared, &["--foreground"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
}

#[test]
fn with_a_stalled_server_every_operation_returns_within_the_read_timeout() {
    let env = Env::new();
    let cached = pattern(1, 300_000);
    env.server.put("bkt", "dir/cached", cached.clone());
    env.server.put("bkt", "dir/cold", pattern(2, 300_000));
    let big = pattern(3, 16 << 20);
    env.server.put("bkt", "big", big.clone());
    let m = Mount::start(
        &env,
        &[
            "--read-timeout",
            "3",
            "--metadata-ttl",
            "1",
            "--readahead-files",
            "0",
            "--part-size-mb",
            "1",
            "--fill-concurrency",
            "1",
        ],
    );
    assert!(std::fs::read(m.p("bkt/dir/cached")).expect("read") == cached);
    wait_settled(&m);
    assert_eq!(std::fs::read_dir(m.p("bkt/dir")).expect("ls").count(), 2);
    // A big file half read: its download is going on when the server stops answering.
    env.server.faults.get_rate.store(2 << 20, Ordering::SeqCst);
    let mut f = std::fs::File::open(m.p("bkt/big")).expect("open big");
    let mut head = vec![0u8; 1 << 20];
    f.read_exact(&mut head).expect("first MiB");
    assert!(head == big[..1 << 20]);

    env.server.faults.frozen.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1200)); // the listing and HEAD go stale
    let bound = Duration::from_secs(4); // --read-timeout + 1 s

    let t = Instant::now();
    let got = std::fs::read(m.p("bkt/dir/cached"));
    let took = t.elapsed();
    assert!(got.expect("cached file served") == cached);
    assert!(took < bound, "cached cat took {took:?}");

    let t = Instant::now();
    let names = std::fs::read_dir(m.p("bkt/dir")).expect("ls").count();
    let took = t.elapsed();
    assert_eq!(names, 2, "the last listing");
    assert!(took < bound, "ls took {took:?}");

    let t = Instant::now();
    let err = std::fs::read(m.p("bkt/dir/cold")).expect_err("nothing to serve");
    let took = t.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took < bound, "uncached cat took {took:?}");

    let t = Instant::now();
    f.seek(SeekFrom::Start(12 << 20)).expect("seek");
    let mut buf = vec![0u8; 1 << 20];
    let got = f.read(&mut buf);
    let took = t.elapsed();
    assert!(took < bound, "a read mid-download took {took:?}: {got:?}");
    if let Ok(n) = got {
        assert!(buf[..n] == big[12 << 20..(12 << 20) + n], "wrong bytes");
    }
    drop(f);
    env.server.faults.frozen.store(false, Ordering::SeqCst);
    assert!(stat_u64(&m, "errors") >= 1, "{}", m.stats());
}

#[test]
fn a_lost_or_broken_index_is_rebuilt_from_the_files_within_the_limits() {
    let env = Env::new();
    let objs: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("f{i}"), pattern(100 + i, 1 << 20)))
        .collect();
    for (k, d) in &objs {
        env.server.put("bkt", k, d.clone());
    }
    let cache = env.cache_dir();
    {
        let m = Mount::start(&env, &["--readahead-files", "0"]);
        for (k, d) in &objs {
            assert!(std::fs::read(m.p(&format!("bkt/{k}"))).expect("read") == *d);
        }
        wait_settled(&m);
        assert_eq!(stat_u64(&m, "entry_count"), 8);
    }
    assert_eq!(cached_bytes(&cache), 8 << 20);

    // The index is gone; the new limit is 3 MiB: the files are adopted, trimmed to the
    // limit, and served as hits.
    std::fs::remove_file(cache.join("index.redb")).expect("rm index");
    {
        let m = Mount::start(
            &env,
            &["--readahead-files", "0", "--cache-max-size-mb", "3"],
        );
        wait_until(
            || cached_bytes(&cache) <= 3 << 20 && stat_u64(&m, "entry_count") > 0,
            "recovery trims the adopted files to the limit",
        );
        assert!(stat_u64(&m, "total_size") <= 3 << 20, "{}", m.stats());
        assert_eq!(
            stat_u64(&m, "total_size"),
            cached_bytes(&cache),
            "the index accounts for every file"
        );
        // The most recently used survive the trim: read them first, before misses evict.
        let before = stat_u64(&m, "hits");
        for (k, d) in objs.iter().rev() {
            assert!(std::fs::read(m.p(&format!("bkt/{k}"))).expect("read") == *d);
        }
        assert!(stat_u64(&m, "hits") > before, "adopted files are hits");
        wait_settled(&m);
        assert!(cached_bytes(&cache) <= 3 << 20, "still within the limit");
    }

    // A truncated index: set aside, rebuilt, the cache stays on.
    let index = std::fs::OpenOptions::new()
        .write(true)
        .open(cache.join("index.redb"))
        .expect("index");
    index.set_len(100).expect("truncate");
    drop(index);
    let m = Mount::start(&env, &["--readahead-files", "0"]);
    assert_eq!(
        m.stats()["enabled"],
        serde_json::json!(true),
        "{}",
        m.stats()
    );
    wait_until(
        || stat_u64(&m, "entry_count") > 0,
        "the files are adopted again",
    );

    // clear removes every file under the shards, indexed or not.
    let (file, _) = cached_files(&cache).pop().expect("a file");
    let stray = file.with_file_name("0".repeat(64));
    std::fs::write(&stray, "not indexed").expect("stray");
    let out = bin().arg("clear").arg(&m.path).output().expect("clear");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cached_files(&cache), vec![], "clear left files");
    let out = bin()
        .arg("clear")
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .expect("clear --cache-dir");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("not mounted"), "{said}");
}

/// Flips bytes in the middle of a cached file behind the mount's back.
fn flip(file: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open cache file");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(b"EVIL!EVIL").expect("write");
}

/// Drops the clean pages the kernel holds for a file, so the next read asks s3cachefs.
fn forget_pages(p: &Path) {
    let f = std::fs::File::open(p).expect("open");
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd; fadvise only drops clean page-cache pages.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

#[test]
fn a_byte_changed_in_a_cached_file_is_caught_on_the_next_read() {
    for passthrough in ["true", "false"] {
        let env = Env::new();
        let data = pattern(7, 3 << 20);
        env.server.put("bkt", "obj", data.clone());
        let m = Mount::start(&env, &["--passthrough", passthrough]);
        assert!(std::fs::read(m.p("bkt/obj")).expect("read") == data);
        wait_settled(&m);
        // A hit first: the file has been checked and is in use.
        assert!(std::fs::read(m.p("bkt/obj")).expect("read") == data);
        let (file, _) = cached_files(&env.cache_dir()).pop().expect("cached");
        flip(&file, (3 << 20) / 2);
        forget_pages(&m.p("bkt/obj"));
        let got = std::fs::read(m.p("bkt/obj")).expect("read after the flip");
        assert!(
            got == data,
            "wrong bytes served (passthrough {passthrough})"
        );
        assert!(
            stat_u64(&m, "corruptions") >= 1,
            "passthrough {passthrough}: {}",
            m.stats()
        );
        wait_settled(&m);
        assert!(std::fs::read(m.p("bkt/obj")).expect("read") == data);
    }
}

#[test]
fn a_key_with_control_characters_leaves_its_siblings_readable() {
    let env = Env::new();
    env.server.put("bkt", "dir/ok.txt", "fine");
    env.server.put("bkt", "dir/bell\u{1}name", "odd");
    env.server.put("bkt", "dir/esc\u{1b}[31mred", "odd too");
    env.server.put("bkt", "dir/also ok+plus", "plus");
    let m = Mount::start(&env, &[]);
    let mut names: Vec<String> = std::fs::read_dir(m.p("bkt/dir"))
        .expect("ls of the directory works")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.contains(&"ok.txt".to_string()), "{names:?}");
    assert!(names.contains(&"also ok+plus".to_string()), "{names:?}");
    assert_eq!(std::fs::read(m.p("bkt/dir/ok.txt")).expect("read"), b"fine");
    assert_eq!(
        std::fs::read(m.p("bkt/dir/also ok+plus")).expect("read"),
        b"plus"
    );
    // Control characters are legal in Linux names: those files are served too.
    assert_eq!(
        std::fs::read(m.p("bkt/dir/bell\u{1}name")).expect("read"),
        b"odd"
    );
    assert_eq!(stat_u64(&m, "errors"), 0, "{}", m.stats());
}
