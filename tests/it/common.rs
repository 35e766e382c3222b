//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use s3cachefs::cache::{Cache, CacheConfig, Clock, SystemClock};
use s3cachefs::store::{S3Options, S3Store};

use crate::s3server::TestServer;

pub use crate::s3server::{ACCESS_KEY, SECRET_KEY};

/// A temp dir holding the server's objects and a cache dir, plus the server.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub server: TestServer,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(&tmp.path().join("objects"), 0).expect("server");
        Env { tmp, server }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    pub fn s3_options(&self) -> S3Options {
        s3_options(&self.server.endpoint())
    }

    pub async fn store(&self) -> Arc<S3Store> {
        Arc::new(S3Store::new(&self.s3_options()).await)
    }

    pub fn cache_config(&self) -> CacheConfig {
        cache_config(&self.cache_dir())
    }

    pub async fn cache(&self, cfg: CacheConfig) -> Cache {
        self.cache_with_clock(cfg, Arc::new(SystemClock)).await
    }

    pub async fn cache_with_clock(&self, cfg: CacheConfig, clock: Arc<dyn Clock>) -> Cache {
        Cache::open(cfg, self.store().await, clock).expect("open cache")
    }
}

pub fn s3_options(endpoint: &str) -> S3Options {
    S3Options {
        endpoint_url: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        max_attempts: 2,
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(10),
        static_credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        ..S3Options::default()
    }
}

pub fn cache_config(dir: &Path) -> CacheConfig {
    CacheConfig {
        max_size: 64 << 20,
        sweep_interval: Duration::from_secs(3600),
        read_timeout: Duration::from_secs(30),
        ..CacheConfig::at(dir)
    }
}

/// Deterministic bytes that differ per seed and position.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
