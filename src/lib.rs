//! s3cachefs: a read-only FUSE filesystem over S3 that serves reads from a persistent
//! local cache.
//!
//! # Layout
//!
//! Dependencies point down this list, never up:
//!
//! - `main.rs` / [`cli`]: flags and environment, validated into a [`config::Config`];
//!   logging; running in the background. `anyhow` lives only in `main.rs`.
//! - [`config`]: the validated settings and their defaults (one place).
//! - [`mount`]: puts a mount together (checks, store, cache, FUSE session, signals).
//! - [`fuse`]: the only module that sees `fuser`: kernel requests to [`fs`] calls.
//! - [`fs`]: filesystem logic with no FUSE types: inodes, listings, open handles,
//!   `.cache-stats`, errno mapping.
//! - [`cache`]: the read-through cache: keys, the sharded store on disk, the persistent
//!   LRU index (redb), limits, TTL, downloads and the `.cache-stats` counters.
//! - [`store`]: the [`store::ObjectStore`] trait and its S3 implementation; the only
//!   module that sees the AWS SDK.

pub mod cache;
pub mod cli;
pub mod config;
pub mod fs;
pub mod fuse;
pub mod mount;
pub mod store;
