//! A local S3-protocol server for the demo and the benchmark: s3s-fs serving the
//! directories under --root as buckets, on 127.0.0.1.
//!
//!     cargo run --example s3server -- --root /tmp/objects --port 9000 [--latency 20]
//!
//! Credentials: access key `test-access-key`, secret `test-secret-key`.

#[path = "../tests/support/s3server.rs"]
mod s3server;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

fn main() {
    let mut root = PathBuf::from("objects");
    let mut port: u16 = 9000;
    let mut latency: u64 = 0;
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
    // Serve until killed.
    loop {
        std::thread::park();
    }
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("s3server: {msg}");
    }
    eprintln!("usage: s3server --root DIR [--port N] [--latency MS]");
    std::process::exit(2);
}
