//! A local S3-protocol server for the demo, the benchmark and the soak: s3s-fs serving the
//! directories under --root as buckets, on 127.0.0.1.
//!
//!     cargo run --example s3server -- --root /tmp/objects --port 9000 [--latency 20]
//!     cargo run --example s3server -- --root /tmp/objects --port 0 --faults [--fault-seed 7]
//!
//! Credentials: access key `test-access-key`, secret `test-secret-key`.
//!
//! `--faults` (for `scripts/soak.sh`) injects faults for as long as the server runs: every
//! `--fault-interval-ms` (default 3000) a seeded random choice replaces the faults of the
//! last interval with one of: nothing, 503 SlowDown or 500 for the next few GETs, 500 for
//! the next few requests of any kind, GET bodies cut off part way, one GET body stalled
//! (it only ends when the client gives up), or extra latency. Each change is printed as a
//! `fault:` line on stdout.

#[path = "../tests/support/s3server.rs"]
mod s3server;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use s3server::{Faults, Kind};

fn main() {
    let mut root = PathBuf::from("objects");
    let mut port: u16 = 9000;
    let mut latency: u64 = 0;
    let mut faults = false;
    let mut seed: Option<u64> = None;
    let mut interval_ms: u64 = 3000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--root" => root = PathBuf::from(value()),
            "--port" => {
                port = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--port: a number"))
            }
            "--latency" => {
                latency = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--latency: milliseconds"))
            }
            "--faults" => faults = true,
            "--fault-seed" => {
                seed = Some(
                    value()
                        .parse()
                        .unwrap_or_else(|_| usage("--fault-seed: a number")),
                )
            }
            "--fault-interval-ms" => {
                interval_ms = value()
                    .parse()
                    .ok()
                    .filter(|&ms| ms > 0)
                    .unwrap_or_else(|| usage("--fault-interval-ms: milliseconds, at least 1"))
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let server = match s3server::TestServer::start(&root, port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("s3server: {e}");
            std::process::exit(1);
        }
    };
    server.faults.latency_ms.store(latency, Ordering::SeqCst);
    println!(
        "s3server: serving {} at {} (latency {latency} ms; access key {}, secret {})",
        root.display(),
        server.endpoint(),
        s3server::ACCESS_KEY,
        s3server::SECRET_KEY
    );
    if faults {
        let seed = seed.unwrap_or_else(rand::random);
        println!("s3server: injecting faults every {interval_ms} ms (seed {seed})");
        let f = server.faults.clone();
        std::thread::Builder::new()
            .name("faults".into())
            .spawn(move || inject_faults(&f, seed, Duration::from_millis(interval_ms), latency))
            .expect("fault thread");
    }
    // Serve until killed.
    loop {
        std::thread::park();
    }
}

/// Every `every`, clears what is left of the last interval's fault and sets a new one.
fn inject_faults(faults: &Arc<Faults>, seed: u64, every: Duration, base_latency: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = 0u64;
    loop {
        std::thread::sleep(every);
        tick += 1;
        faults.fail(None, 0, 500);
        faults.cut_next_gets.store(0, Ordering::SeqCst);
        faults.stall_next_gets.store(0, Ordering::SeqCst);
        faults.latency_ms.store(base_latency, Ordering::SeqCst);
        let what = match rng.random_range(0..100u32) {
            // A third of the time: no fault, so fills can complete.
            0..34 => "none".to_string(),
            34..52 => {
                let n = rng.random_range(1..=8u64);
                faults.fail(Some(Kind::Get), n, 503);
                format!("next {n} GETs answer 503 SlowDown")
            }
            52..60 => {
                let n = rng.random_range(1..=6u64);
                faults.fail(Some(Kind::Get), n, 500);
                format!("next {n} GETs answer 500")
            }
            60..68 => {
                let n = rng.random_range(1..=4u64);
                faults.fail(None, n, 500);
                format!("next {n} requests of any kind answer 500")
            }
            68..88 => {
                let n = rng.random_range(1..=4u64);
                let after = rng.random_range(0..(2u64 << 20));
                faults.cut_after.store(after, Ordering::SeqCst);
                faults.cut_next_gets.store(n, Ordering::SeqCst);
                format!("next {n} GET bodies cut after {after} bytes")
            }
            // Sparingly: a stalled body ends only when the client gives up on it.
            88..92 => {
                let after = rng.random_range(0..(2u64 << 20));
                faults.stall_after.store(after, Ordering::SeqCst);
                faults.stall_next_gets.store(1, Ordering::SeqCst);
                format!("next GET body stalls after {after} bytes")
            }
            _ => {
                let ms = base_latency + rng.random_range(20..=300u64);
                faults.latency_ms.store(ms, Ordering::SeqCst);
                format!("latency {ms} ms")
            }
        };
        println!("fault: tick {tick}: {what}");
    }
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("s3server: {msg}");
    }
    eprintln!(
        "usage: s3server --root DIR [--port N] [--latency MS] \
         [--faults [--fault-seed N] [--fault-interval-ms MS]]"
    );
    std::process::exit(2);
}
