//! Errors of the filesystem layer and the one place they become errno values.

use crate::cache::CacheError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("read-only file system")]
    ReadOnly,
    #[error("permission denied by S3")]
    AccessDenied,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("unknown file handle")]
    BadHandle,
    /// The object changed while open and the handle's version cannot be read any more.
    #[error("object changed on S3 while open")]
    Stale,
    #[error("I/O error: {0}")]
    Io(String),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::ReadOnly => libc::EROFS,
            FsError::AccessDenied => libc::EACCES,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::BadHandle => libc::EBADF,
            FsError::Stale => libc::ESTALE,
            FsError::Io(_) => libc::EIO,
        }
    }

    pub fn from_store(e: StoreError) -> FsError {
        match e {
            StoreError::NotFound(_) => FsError::NotFound,
            StoreError::AccessDenied(_) => FsError::AccessDenied,
            StoreError::PreconditionFailed(_) => FsError::Stale,
            StoreError::Throttled(m)
            | StoreError::Transient(m)
            | StoreError::NoAnswer(m)
            | StoreError::Unavailable(m)
            | StoreError::NoCredentials(m)
            | StoreError::Other(m) => FsError::Io(m),
        }
    }

    pub fn from_cache(e: &CacheError) -> FsError {
        match e {
            CacheError::Store(s) => FsError::from_store(s.clone()),
            other => FsError::Io(other.to_string()),
        }
    }
}
