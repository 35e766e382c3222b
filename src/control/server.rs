//! The mount's side of the control channel: a task on the mount's runtime accepting
//! connections on `<cache dir>/control.sock` and answering each request with the open
//! [`Cache`].

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::registry::Registration;
use super::{Listed, MAX_REQUEST, MountStatus, Request, Response};
use crate::cache::Cache;
use crate::warming;

/// The running server. Dropping it stops accepting and removes the socket and the
/// registry entry, so a stale socket never answers for a mount that is gone.
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
    _registration: Option<Registration>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish()
    }
}

impl ControlServer {
    /// Listens at `socket` for the mount at `mountpoint` (canonical) and registers the
    /// mountpoint so `s3cachefs clear MOUNTPOINT` finds it. Must run inside a Tokio
    /// runtime. The caller holds the cache lock, so a socket file already there was left
    /// by a process that died and is replaced.
    pub fn start(cache: Cache, socket: &Path, mountpoint: &Path) -> io::Result<ControlServer> {
        match std::fs::symlink_metadata(socket) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(socket)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", socket.display()),
                ));
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(socket)?;
        // The cache directory is 0700 already; 0600 keeps the socket private even if the
        // directory's mode is changed by hand.
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        let registration = match Registration::register(mountpoint, socket) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(error = %e, "cannot register the mount: `s3cachefs clear MOUNTPOINT` will not find it (--cache-dir still works)");
                None
            }
        };
        let status = Status {
            mountpoint: mountpoint.to_path_buf(),
            cache_dir: cache.config().dir.clone(),
        };
        let task = tokio::spawn(accept_loop(listener, cache, status));
        info!(socket = %socket.display(), "control socket listening");
        Ok(ControlServer {
            path: socket.to_path_buf(),
            task,
            _registration: registration,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Clone)]
struct Status {
    mountpoint: PathBuf,
    cache_dir: PathBuf,
}

async fn accept_loop(listener: UnixListener, cache: Cache, status: Status) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (cache, status) = (cache.clone(), status.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, cache, status).await {
                        debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Only the mount's own user and root may drive it, whatever the socket's mode says.
fn allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .is_ok_and(|c| c.uid() == me || c.uid() == 0)
}

async fn serve(stream: UnixStream, cache: Cache, status: Status) -> io::Result<()> {
    if !allowed(&stream) {
        warn!("control socket: refused a connection from another user");
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let n = (&mut read)
            .take(MAX_REQUEST)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = if line.last() != Some(&b'\n') && n as u64 >= MAX_REQUEST {
            // Cannot find where the next request starts: answer and hang up.
            let r = Response::Error {
                message: "request too long".into(),
            };
            write_line(&mut write, &r).await?;
            return Ok(());
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => answer(req, &cache, &status).await,
                Err(e) => Response::Error {
                    message: format!("bad request: {e}"),
                },
            }
        };
        write_line(&mut write, &response).await?;
    }
}

async fn write_line(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> io::Result<()> {
    let mut out = serde_json::to_vec(r).map_err(io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await
}

async fn answer(req: Request, cache: &Cache, status: &Status) -> Response {
    match req {
        Request::Stats => Response::Stats(MountStatus {
            mountpoint: status.mountpoint.clone(),
            cache_dir: status.cache_dir.clone(),
            pid: std::process::id(),
            stats: serde_json::to_value(cache.stats()).unwrap_or_default(),
        }),
        Request::Clear => {
            // Unlinking thousands of files is blocking work.
            let c = cache.clone();
            match tokio::task::spawn_blocking(move || c.clear()).await {
                Ok((entries, downloads)) => {
                    info!(entries, downloads, "cache cleared on request");
                    // A download under way is an entry to be: the user just read it.
                    Response::Cleared {
                        removed: (entries + downloads) as u64,
                    }
                }
                Err(e) => Response::Error {
                    message: format!("clearing the cache: {e}"),
                },
            }
        }
        Request::List { bucket, prefix } => {
            match warming::list(cache.store().as_ref(), &bucket, &prefix).await {
                Ok(objects) => Response::Listing {
                    objects: objects
                        .into_iter()
                        .map(|o| Listed {
                            key: o.key,
                            size: o.size,
                        })
                        .collect(),
                },
                Err(e) => Response::Error {
                    message: format!("listing s3://{bucket}/{prefix}: {e}"),
                },
            }
        }
        Request::Warm { bucket, key } => match warming::warm_one(cache, &bucket, &key).await {
            Ok((outcome, size)) => Response::Warmed { outcome, size },
            Err(e) => Response::Error {
                message: format!("s3://{bucket}/{key}: {e}"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::admin::{Limits, cache_config};
    use crate::cache::SystemClock;
    use crate::control::{Client, ControlError, SOCKET_NAME, registry};
    use crate::store::MemoryStore;
    use crate::warming::Warmed;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_stats_list_warm_and_clear_then_goes_away() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(MemoryStore::new());
        store.put("b", "d/x", vec![1u8; 1000]);
        store.put("b", "d/y", vec![2u8; 10]);
        store.put("b", "dz", vec![3u8; 10]);
        let limits = Limits {
            max_size: 1 << 20,
            max_entries: 10,
        };
        let cfg = cache_config(
            tmp.path().join("c"),
            limits,
            Duration::from_secs(3600),
            "default".into(),
        );
        let cache = Cache::open(cfg, store, Arc::new(SystemClock)).expect("cache");
        let sock = tmp.path().join("c").join(SOCKET_NAME);
        let mp = tmp.path().join("mnt");
        let server = ControlServer::start(cache.clone(), &sock, &mp).expect("start");
        let mode = std::fs::metadata(&sock)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(registry::lookup(&mp), Some(sock.clone()));

        let mut c = Client::connect(&sock).await.expect("connect");
        let st = c.status().await.expect("stats");
        assert_eq!(st.mountpoint, mp);
        assert_eq!(st.stats["entry_count"], 0);
        let listed = c
            .call(&Request::List {
                bucket: "b".into(),
                prefix: "d".into(),
            })
            .await
            .expect("list");
        let Response::Listing { objects } = listed else {
            panic!("{listed:?}")
        };
        let keys: Vec<_> = objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["d/x", "d/y"]);
        let warm = Request::Warm {
            bucket: "b".into(),
            key: "d/x".into(),
        };
        for want in [Warmed::Fetched, Warmed::Cached] {
            match c.call(&warm).await.expect("warm") {
                Response::Warmed { outcome, size } => assert_eq!((outcome, size), (want, 1000)),
                other => panic!("{other:?}"),
            }
        }
        let missing = c
            .call(&Request::Warm {
                bucket: "b".into(),
                key: "nope".into(),
            })
            .await;
        assert!(
            matches!(missing, Err(ControlError::Remote(_))),
            "{missing:?}"
        );
        assert_eq!(
            c.call(&Request::Clear).await.expect("clear"),
            Response::Cleared { removed: 1 }
        );
        assert_eq!(cache.stats().entry_count, 0);

        // A line that is no request gets an error, and the connection stays usable.
        let stream = tokio::net::UnixStream::connect(&sock).await.expect("raw");
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"op\":\"format_disk\"}\n{\"op\":\"clear\"}\n")
            .await
            .expect("write");
        let mut line = String::new();
        r.read_line(&mut line).await.expect("read");
        assert!(line.contains("\"reply\":\"error\""), "{line}");
        line.clear();
        r.read_line(&mut line).await.expect("read");
        assert!(line.contains("\"reply\":\"cleared\""), "{line}");

        drop(server);
        assert!(!sock.exists(), "socket removed");
        assert_eq!(registry::lookup(&mp), None);
        assert!(Client::connect(&sock).await.is_err());
    }
}
