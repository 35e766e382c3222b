//! A mount served in-process (`mount::serve`) over a `MemoryStore`: the real kernel and
//! FUSE session, with the store in the test's hands and the end a future it completes.

use std::sync::Arc;
use std::time::Duration;

use s3cachefs::config::{Config, MountSettings};
use s3cachefs::fs::Source;
use s3cachefs::store::{MemoryStore, ObjectStore, S3Options};

use crate::common::cache_config;
use crate::mount::is_mounted;

#[test]
fn an_in_process_mount_over_a_memory_store_serves_and_ends_on_its_shutdown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let store = Arc::new(MemoryStore::new());
    store.put("bkt", "dir/a.txt", "version one");
    store.put("bkt", "dir/b.txt", "bee");
    let cfg = Config {
        mount: MountSettings {
            mountpoint: mnt.clone(),
            source: Source::Bucket {
                bucket: "bkt".into(),
                prefix: String::new(),
            },
            metadata_ttl: Duration::ZERO,
            allow_other: false,
            foreground: true,
            uid: 0,
            gid: 0,
            file_mode: 0o444,
            dir_mode: 0o555,
            fuse_threads: 2,
            readahead_files: 0,
            passthrough: true,
            log_file: None,
        },
        s3: S3Options::default(),
        cache: cache_config(&tmp.path().join("cache")),
        shared: None,
        metrics: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let served = {
        let store = store.clone();
        std::thread::spawn(move || {
            s3cachefs::mount::serve(
                cfg,
                move |_| async move { store as Arc<dyn ObjectStore> },
                async move {
                    let _ = stopped.await;
                },
                move |r| {
                    let _ = ready_tx.send(r);
                },
            )
        })
    };
    let ready = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("ready is told");
    assert_eq!(ready, Ok(Vec::new()));
    assert!(is_mounted(&mnt));

    let mut names: Vec<String> = std::fs::read_dir(mnt.join("dir"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "b.txt"]);
    assert_eq!(
        std::fs::read(mnt.join("dir/a.txt")).expect("read"),
        b"version one"
    );
    // A new version, seen at once with a metadata TTL of 0: a new file to the kernel.
    store.put("bkt", "dir/a.txt", "version two, longer");
    assert_eq!(
        std::fs::read(mnt.join("dir/a.txt")).expect("read"),
        b"version two, longer"
    );
    // Deleted: gone.
    store.delete("bkt", "dir/b.txt");
    let err = std::fs::read(mnt.join("dir/b.txt")).expect_err("deleted");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

    stop.send(()).expect("the mount is listening");
    let result = served.join().expect("the serving thread");
    assert!(result.is_ok(), "{result:?}");
    assert!(!is_mounted(&mnt), "unmounted when told to stop");
}
