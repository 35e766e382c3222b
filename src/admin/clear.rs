//! `s3cachefs clear`: empties a cache. A live mount is asked to do it over its control
//! socket (a second process cannot open a cache a mount holds, and the mount's open
//! handles must keep reading); an unmounted cache directory is opened and cleared here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{AdminError, Limits, cache_config, count, locate};
use crate::cache::inspect::InspectError;
use crate::cache::{Cache, CacheError, LayoutError, SystemClock};
use crate::control::{ControlError, Request, Response};

#[derive(Debug, Clone)]
pub enum ClearTarget {
    /// A mountpoint or any path in a mount.
    Mount(PathBuf),
    CacheDir(PathBuf),
}

/// Who emptied the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearedBy {
    Mount {
        mountpoint: PathBuf,
        cache_dir: PathBuf,
    },
    /// Nothing had the directory mounted.
    Directly { cache_dir: PathBuf },
    /// The mount runs with the cache off: there was nothing to clear.
    CacheOff { mountpoint: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    pub removed: u64,
    pub by: ClearedBy,
}

impl std::fmt::Display for Cleared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.by {
            ClearedBy::Mount {
                mountpoint,
                cache_dir,
            } => write!(
                f,
                "cleared {} from {} (the mount at {} did it; files open there keep reading)",
                count(self.removed, "entry", "entries"),
                cache_dir.display(),
                mountpoint.display()
            ),
            ClearedBy::Directly { cache_dir } => write!(
                f,
                "cleared {} from {} (not mounted)",
                count(self.removed, "entry", "entries"),
                cache_dir.display()
            ),
            ClearedBy::CacheOff { mountpoint } => write!(
                f,
                "nothing to clear: the mount at {} runs with the cache off (--no-cache or \
                 CACHE_ENABLED=false), so every read goes straight to S3 and nothing is kept",
                mountpoint.display()
            ),
        }
    }
}

pub async fn clear(target: &ClearTarget) -> Result<Cleared, AdminError> {
    match target {
        ClearTarget::Mount(path) => {
            let root = locate::mount_root(path)?;
            if locate::cache_off(&locate::read_stats(&root)?.1) {
                return Ok(Cleared {
                    removed: 0,
                    by: ClearedBy::CacheOff { mountpoint: root },
                });
            }
            let (mut client, status) = locate::connect_mount(&root).await?;
            ask(&mut client, status).await
        }
        ClearTarget::CacheDir(dir) => {
            if let Some((mut client, status)) = locate::connect_cache_dir(dir).await {
                return ask(&mut client, status).await;
            }
            clear_directly(dir).await
        }
    }
}

async fn ask(
    client: &mut crate::control::Client,
    status: crate::control::MountStatus,
) -> Result<Cleared, AdminError> {
    match client.call(&Request::Clear).await? {
        Response::Cleared { removed } => Ok(Cleared {
            removed,
            by: ClearedBy::Mount {
                mountpoint: status.mountpoint,
                cache_dir: status.cache_dir,
            },
        }),
        other => Err(ControlError::Protocol(format!("{other:?}")).into()),
    }
}

async fn clear_directly(dir: &Path) -> Result<Cleared, AdminError> {
    if !dir.join(crate::cache::INDEX_FILE).is_file() {
        return Err(if dir.is_dir() {
            InspectError::NotACache(dir.to_path_buf())
        } else {
            InspectError::Missing(dir.to_path_buf())
        }
        .into());
    }
    // Limits far above anything stored, so opening trims nothing before the clear.
    let limits = Limits {
        max_size: u64::MAX >> 2,
        max_entries: u64::MAX >> 2,
    };
    let cfg = cache_config(
        dir.to_path_buf(),
        limits,
        Duration::from_secs(u32::MAX as u64),
        "default".into(),
    );
    // Clearing never talks to S3; a cache still needs a store to open.
    let cache = Cache::open(
        cfg,
        Arc::new(crate::store::NoStore::new("clearing a cache")),
        Arc::new(SystemClock),
    )
    .map_err(|e| match e {
        CacheError::Layout(LayoutError::Locked { dir, holder }) => AdminError::NotAMount(format!(
            "cache directory {} is in use by a running s3cachefs mount{holder} that does not \
             answer on its control socket; run `s3cachefs clear MOUNTPOINT`",
            dir.display()
        )),
        other => other.into(),
    })?;
    // After a crash, recovery also removes files the index does not know: let it finish
    // so the directory really ends up empty.
    cache.wait_recovered().await;
    let c = cache.clone();
    let removed = tokio::task::spawn_blocking(move || c.clear())
        .await
        .map_err(|e| AdminError::Other(e.to_string()))?;
    cache.close()?;
    Ok(Cleared {
        removed: (removed.0 + removed.1) as u64,
        by: ClearedBy::Directly {
            cache_dir: dir.to_path_buf(),
        },
    })
}
