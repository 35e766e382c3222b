//! What a command's argument refers to: the s3cachefs mount a path is in, and the live
//! mount (if any) behind a mountpoint or a cache directory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::AdminError;
use crate::control::{self, Client, MountStatus, registry};

/// The name of the stats file at a mount's root.
pub use crate::fs::STATS_NAME as STATS_FILE;

/// The root of the s3cachefs mount that `path` is in (canonical): the topmost directory
/// above it on the same filesystem, which must have a `.cache-stats`.
pub fn mount_root(path: &Path) -> Result<PathBuf, AdminError> {
    let io = |err| AdminError::Io {
        path: path.to_path_buf(),
        err,
    };
    let p = std::fs::canonicalize(path).map_err(io)?;
    let dev = std::fs::metadata(&p).map_err(io)?.dev();
    let mut root = p.as_path();
    while let Some(parent) = root.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == dev => root = parent,
            _ => break,
        }
    }
    // Named as given: the root found above it ("/" for most paths) means nothing to
    // the user.
    if !root.join(STATS_FILE).is_file() {
        return Err(AdminError::NotAMount(format!(
            "{} is not in an s3cachefs mount",
            path.display()
        )));
    }
    Ok(root.to_path_buf())
}

/// The `.cache-stats` document of the mount at `root`: as the mount wrote it, and parsed.
pub fn read_stats(root: &Path) -> Result<(String, Value), AdminError> {
    let file = root.join(STATS_FILE);
    let text = std::fs::read_to_string(&file).map_err(|err| AdminError::Io {
        path: file.clone(),
        err,
    })?;
    let doc = serde_json::from_str(&text)
        .map_err(|e| AdminError::Other(format!("{}: not JSON: {e}", file.display())))?;
    Ok((text, doc))
}

/// Whether a mount's `.cache-stats` says it runs with the cache off: then it has no
/// cache to clear or warm, and no control socket.
pub fn cache_off(stats: &Value) -> bool {
    stats.get("enabled").and_then(Value::as_bool) == Some(false)
}

/// Connects to the live mount at `root` (a canonical mount root) through the registry of
/// mountpoints, and checks that it answers for that mountpoint.
pub async fn connect_mount(root: &Path) -> Result<(Client, MountStatus), AdminError> {
    let unreachable = |why: String| {
        AdminError::NotAMount(format!(
            "cannot reach the s3cachefs process serving {} ({why}); it may run as another \
             user. Pass its cache directory instead: --cache-dir DIR",
            root.display()
        ))
    };
    let socket = registry::lookup(root).ok_or_else(|| {
        unreachable(format!(
            "no entry in {}",
            registry::runtime_dir().join("mounts").display()
        ))
    })?;
    let mut client = Client::connect(&socket)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = client.status().await?;
    if status.mountpoint != root {
        return Err(unreachable(format!(
            "its registered socket answers for {}",
            status.mountpoint.display()
        )));
    }
    Ok((client, status))
}

/// The live mount using the cache directory `dir`, if one answers on its control socket.
pub async fn connect_cache_dir(dir: &Path) -> Option<(Client, MountStatus)> {
    let mut client = Client::connect(&control::socket_path(dir)).await.ok()?;
    let status = client.status().await.ok()?;
    Some((client, status))
}
