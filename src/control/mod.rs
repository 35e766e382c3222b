//! The control channel of a running mount: `s3cachefs stats`, `clear` and `warm` ask the
//! mount process to act on its open cache, since a second process cannot open a cache
//! directory that a mount holds (one process per cache directory).
//!
//! - Transport: a Unix socket at `<cache dir>/control.sock`, mode 0600 inside the 0700
//!   cache directory, so only the mount's user (and root) can reach it; the server also
//!   checks the peer's uid.
//! - Protocol: one JSON object per line each way, one response per request, any number of
//!   requests per connection ([`Request`], [`Response`]).
//! - Finding the socket from a mountpoint: [`registry`] (the mount's cache directory is not
//!   visible from the mountpoint).

pub mod client;
pub mod registry;
pub mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::warming::Warmed;

pub use client::Client;
pub use server::ControlServer;

/// File name of the socket inside the cache directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line the server reads: requests are small.
pub(crate) const MAX_REQUEST: u64 = 1 << 20;
/// Longest response line the client reads: a listing of a large prefix is the long one.
pub(crate) const MAX_RESPONSE: u64 = 1 << 30;

pub fn socket_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(SOCKET_NAME)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The `.cache-stats` document and where the mount is.
    Stats,
    /// Empty the cache; handles already open keep reading their bytes.
    Clear,
    /// Every object `s3://bucket/prefix` names (see [`crate::warming::list`]), so the
    /// client can check the limits and size its progress bar before warming.
    List { bucket: String, prefix: String },
    /// Open one object through the cache, which fetches it on a miss.
    Warm { bucket: String, key: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Stats(MountStatus),
    Cleared { removed: u64 },
    Listing { objects: Vec<Listed> },
    Warmed { outcome: Warmed, size: u64 },
    Error { message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountStatus {
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub pid: u32,
    /// The `.cache-stats` document as JSON. Kept untyped so a client of another version
    /// still reads the fields it knows (fields may be added to `.cache-stats`).
    pub stats: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    // io::Errors are in the messages and deliberately not a `source`, so `{:#}` does not
    // print them twice.
    #[error("cannot reach the mount's control socket {path}: {err}")]
    Connect { path: PathBuf, err: std::io::Error },
    #[error("control socket: {0}")]
    Io(std::io::Error),
    #[error("control socket: the mount did not answer within {0} s")]
    Timeout(u64),
    #[error("control socket: unexpected answer: {0}")]
    Protocol(String),
    /// The mount answered with an error.
    #[error("{0}")]
    Remote(String),
}

impl From<std::io::Error> for ControlError {
    fn from(e: std::io::Error) -> Self {
        ControlError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_json_line_each() {
        let r = Request::Warm {
            bucket: "b".into(),
            key: "a b\nc".into(),
        };
        let line = serde_json::to_string(&r).expect("json");
        assert!(!line.contains('\n'));
        assert_eq!(line, r#"{"op":"warm","bucket":"b","key":"a b\nc"}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).expect("parse"), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"clear"}"#).expect("clear"),
            Request::Clear
        );
        let w = Response::Warmed {
            outcome: Warmed::NotCached,
            size: 3,
        };
        assert_eq!(
            serde_json::to_string(&w).expect("json"),
            r#"{"reply":"warmed","outcome":"not_cached","size":3}"#
        );
    }
}
