//! `/metrics` of a real mount (`--metrics-addr`), scraped over HTTP and read with the
//! Prometheus project's own parser (Python's `prometheus_client`, see
//! `support/promparse.py`; `scripts/test.sh` installs it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Env, pattern};
use crate::mount::{Mount, bin, mount_cmd, wait_settled, wait_until};

const PARSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/promparse.py");

/// A Python that has `prometheus_client`: the one on PATH, else Debian's.
fn python() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| {
            Command::new(py)
                .args(["-c", "import prometheus_client"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("no python3 with prometheus_client: apt-get install python3-prometheus-client")
}

/// One HTTP/1.1 request: (status line, headers, body).
fn get(addr: &str, path: &str, accept: Option<&str>) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

/// Every sample of an exposition, as the Python parser read it.
fn parse(format: &str, body: &str) -> Vec<Value> {
    let mut child = Command::new(python())
        .arg(PARSER)
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "{format} parser refused /metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("parser JSON") {
        Value::Array(v) => v,
        other => panic!("not a list: {other}"),
    }
}

/// The samples named `name` whose labels include every pair of `labels`.
fn samples<'a>(all: &'a [Value], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Value> {
    all.iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .collect()
}

fn value(all: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(all, name, labels);
    assert_eq!(found.len(), 1, "one {name} {labels:?}, got {found:?}");
    found[0]["value"].as_f64().expect("a number")
}

fn total(all: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(all, name, labels)
        .iter()
        .filter_map(|s| s["value"].as_f64())
        .sum()
}

/// Drops the kernel's cached pages of one file, so the next read reaches the mount.
fn drop_pages(path: &Path) {
    let f = std::fs::File::open(path).expect("open");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: fd is open for the call.
    let r = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "fadvise");
}

/// After a miss and a hit, `/metrics` parses with Prometheus's text and OpenMetrics
/// parsers, shows every `.cache-stats` number with the value the file shows, has reads
/// in both latency series and S3 requests by operation, and carries the user's labels
/// on every series. The port chosen for `:0` is in the log and in `.cache-stats`.
#[test]
fn metrics_after_a_miss_and_a_hit_agree_with_cache_stats() {
    let env = Env::new();
    let big = pattern(15, 3 << 20);
    env.server.put("bkt", "data/big.bin", big.clone());
    let log = env.tmp.path().join("mount.log");
    let m = Mount::start_logging_to(
        &env,
        &[
            "--bucket",
            "bkt",
            "--metrics-addr",
            "127.0.0.1:0",
            "--metrics-label",
            "host=test-host",
            "--metrics-label",
            "mount=it",
            // Hits through s3cachefs, not the kernel: their reads are what is timed.
            "--passthrough",
            "false",
        ],
        Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    let stats = m.stats();
    let addr = stats["metrics_addr"]
        .as_str()
        .unwrap_or_else(|| panic!("metrics_addr in .cache-stats: {stats}"))
        .to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let logged = format!("http://{addr}/metrics");
    wait_until(
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&logged)),
        "the log names the metrics address",
    );

    let file = m.p("data/big.bin");
    assert_eq!(std::fs::read(&file).expect("miss"), big);
    wait_settled(&m);
    wait_until(
        || m.stats()["entry_count"] == 1,
        "the download is committed",
    );
    drop_pages(&file);
    assert_eq!(std::fs::read(&file).expect("hit"), big);

    let before = m.stats();
    let (status, headers, body) = get(&addr, "/metrics", None);
    let after = m.stats();
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    let all = parse("text", &body);
    assert!(before["hits"].as_u64() >= Some(1), "{before}");
    assert!(before["misses"].as_u64() >= Some(1), "{before}");

    // Every series carries the user's labels.
    for s in &all {
        assert_eq!(s["labels"]["host"], "test-host", "{s}");
        assert_eq!(s["labels"]["mount"], "it", "{s}");
    }
    // One source of truth: every number of .cache-stats, with the file's value (the
    // mount is idle, so the two reads around the scrape agree).
    let Value::Object(doc) = &before else {
        panic!("{before}")
    };
    let bkt = [("bucket", "bkt")];
    let mut compared = 0;
    for (field, v) in doc {
        let Some(want) = v.as_f64().or(v.as_bool().map(|b| f64::from(u8::from(b)))) else {
            continue;
        };
        if field == "uptime_seconds" {
            continue;
        }
        assert_eq!(after[field], *v, "{field} changed while scraping");
        let gauge = format!("s3cachefs_{field}");
        let counter = format!("s3cachefs_{field}_total");
        let got = if samples(&all, &gauge, &bkt).is_empty() {
            value(&all, &counter, &bkt)
        } else {
            value(&all, &gauge, &bkt)
        };
        assert_eq!(
            got, want,
            "{field}: /metrics says {got}, .cache-stats {want}"
        );
        compared += 1;
    }
    assert!(compared >= 20, "only {compared} fields compared");
    assert_eq!(
        value(&all, "s3cachefs_hits_total", &bkt),
        before["hits"].as_f64().expect("hits")
    );

    // Reads of the hit and of the miss, each in its own series.
    let reads = "s3cachefs_read_latency_seconds_count";
    let hit = [("bucket", "bkt"), ("result", "hit"), ("tier", "local")];
    let miss = [("bucket", "bkt"), ("result", "miss"), ("tier", "origin")];
    assert!(value(&all, reads, &hit) >= 1.0, "no hit reads timed");
    assert!(value(&all, reads, &miss) >= 1.0, "no miss reads timed");
    // S3 requests by operation and outcome.
    let req = "s3cachefs_s3_request_latency_seconds_count";
    let ok = |op| [("op", op), ("outcome", "ok"), ("tier", "origin")];
    assert!(total(&all, req, &ok("GET")) >= 1.0, "no GET timed");
    assert!(total(&all, req, &ok("LIST")) >= 1.0, "no LIST timed");
    assert_eq!(
        value(&all, "s3cachefs_first_byte_latency_seconds_count", &bkt),
        1.0,
        "one cold open"
    );
    assert_eq!(
        value(
            &all,
            "s3cachefs_fill_throughput_bytes_per_second_count",
            &bkt
        ),
        1.0,
        "one download of 3 MiB"
    );
    assert_eq!(
        samples(&all, "s3cachefs_build_info", &[])[0]["labels"]["version"],
        env!("CARGO_PKG_VERSION")
    );

    // A scraper asking for OpenMetrics gets it, and the strict parser takes it.
    let (_, headers, body) = get(&addr, "/metrics", Some("application/openmetrics-text"));
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let om = parse("openmetrics", &body);
    assert!(!samples(&om, "s3cachefs_hits_total", &bkt).is_empty());
    let (status, _, _) = get(&addr, "/other", None);
    assert!(status.contains(" 404 "), "{status}");
}

/// Runs `s3cachefs` expecting exit `code` within a few seconds; returns its stderr.
fn exits(mut cmd: Command, code: i32) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("run s3cachefs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    stderr
}

/// `/metrics` has no authentication: an address other machines can reach is refused
/// (exit 2, before anything is mounted) unless `--metrics-allow-remote` says it is
/// meant; so are labels s3cachefs sets itself. A port in use fails the mount (exit 1).
#[test]
fn a_remote_metrics_address_needs_allow_remote_and_a_busy_port_fails_the_mount() {
    let env = Env::new();
    let mnt = env.tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let started = Instant::now();
    let mut cmd = mount_cmd(&env, &mnt, &env.cache_dir());
    cmd.args(["--foreground", "--metrics-addr", "0.0.0.0:9100"]);
    let e = exits(cmd, 2);
    assert!(
        e.contains("--metrics-addr") && e.contains("--metrics-allow-remote"),
        "{e}"
    );
    let mut cmd = mount_cmd(&env, &mnt, &env.cache_dir());
    cmd.arg("--foreground")
        .env("S3CACHEFS_METRICS_ADDR", "192.0.2.10:9100");
    let e = exits(cmd, 2);
    assert!(e.contains("S3CACHEFS_METRICS_ADDR"), "{e}");
    let mut cmd = bin();
    cmd.arg("mount").arg(&mnt).args([
        "--metrics-addr",
        "127.0.0.1:0",
        "--metrics-label",
        "bucket=x",
    ]);
    let e = exits(cmd, 2);
    assert!(e.contains("--metrics-label"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = busy.local_addr().expect("addr").to_string();
    let mut cmd = mount_cmd(&env, &mnt, &env.cache_dir());
    cmd.args(["--foreground", "--metrics-addr", &port]);
    let e = exits(cmd, 1);
    assert!(
        e.contains(&format!("cannot serve metrics on {port}")),
        "{e}"
    );
    assert!(!crate::mount::is_mounted(&mnt));
}

/// The store records every attempt: a throttled one and a failed one, each retried, show
/// in the throttle and retry counters and in the latency histogram under their outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_and_retries_are_counted_by_operation() {
    use prometheus_client::registry::Registry;
    use s3cachefs::store::{BucketLabels, ObjectStore, S3Store, StoreMetrics};

    let env = Env::new();
    env.server.put("bkt", "k", "hello");
    let metrics = StoreMetrics::new(std::sync::Arc::new(BucketLabels::new(Some("bkt".into()))));
    let store = S3Store::new(&s3cachefs::store::S3Options {
        metrics: metrics.clone(),
        ..env.s3_options()
    })
    .await;
    env.server
        .faults
        .fail(Some(crate::s3server::Kind::Head), 1, 503);
    store.head("bkt", "k").await.expect("HEAD after a 503");
    env.server
        .faults
        .fail(Some(crate::s3server::Kind::Get), 1, 500);
    store
        .get_range("bkt", "k", None, None)
        .await
        .expect("GET after a 500");

    let mut registry = Registry::with_prefix("s3cachefs");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
    let all = parse("text", &text);
    let op = |op| [("op", op), ("bucket", "bkt"), ("tier", "origin")];
    assert_eq!(
        value(&all, "s3cachefs_s3_throttles_total", &op("HEAD")),
        1.0
    );
    assert_eq!(value(&all, "s3cachefs_s3_retries_total", &op("HEAD")), 1.0);
    assert_eq!(value(&all, "s3cachefs_s3_retries_total", &op("GET")), 1.0);
    assert!(samples(&all, "s3cachefs_s3_throttles_total", &op("GET")).is_empty());
    let count = "s3cachefs_s3_request_latency_seconds_count";
    let attempts = |op, outcome| value(&all, count, &[("op", op), ("outcome", outcome)]);
    assert_eq!(attempts("HEAD", "throttled"), 1.0);
    assert_eq!(attempts("HEAD", "ok"), 1.0);
    assert_eq!(attempts("GET", "transient"), 1.0);
    assert_eq!(attempts("GET", "ok"), 1.0);
}
