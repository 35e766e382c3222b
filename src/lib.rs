//! s3cachefs: a read-only FUSE filesystem over S3 that serves reads from a persistent
//! local cache.
//!
//! # Layout
//!
//! Dependencies point down this list, never up:
//!
//! - `main.rs` / [`cli`]: flags and environment, validated into a [`config::Config`];
//!   logging. `anyhow` lives only in `main.rs`.
//! - [`fstab`]: `/etc/fstab` lines: a mount.fuse3 call turned into `s3cachefs mount` flags.
//! - [`admin`]: the operating commands `stats`, `clear` and `warm`, on a live mount or on an
//!   unmounted cache directory, `unmount`, which waits for the mount's process, and
//!   `shared gc`, which bounds a shared cache tier.
//! - [`daemon`]: a background mount: the detached child and the pipe that says when it
//!   is live.
//! - [`mount`]: puts a mount together (checks, store, cache, FUSE session, signals, the
//!   control socket, periodic summaries in the log); [`mount::serve`] takes the store
//!   and the shutdown from its caller, so tests mount in-process over a `MemoryStore`.
//! - [`config`]: the validated settings of a whole mount, made of the lower layers' own
//!   settings ([`cache::CacheConfig`], [`store::S3Options`], [`fs::Source`],
//!   [`fuse::FuseOptions`], [`metrics::MetricsOptions`]).
//! - [`metrics`]: Prometheus `/metrics` of a mount (`--metrics-addr`): the `.cache-stats`
//!   numbers read at each scrape, and the histograms the lower layers record through
//!   recorders they own ([`store::StoreMetrics`], [`cache::CacheMetrics`],
//!   [`fs::ReadMetrics`]); its HTTP server (hyper).
//! - [`control`]: a running mount's control socket (`<cache dir>/control.sock`): the
//!   server the mount runs, the client the commands use, and the registry that finds the
//!   socket from a mountpoint.
//! - [`warming`]: warming with an open cache: what an `s3://` prefix names, and one
//!   object opened through the cache.
//! - [`fuse`]: the only module that sees `fuser`: kernel requests to [`fs`] calls.
//! - [`fs`]: filesystem logic with no FUSE types: `types` (its vocabulary), `inode`
//!   (numbers and what is known of each path), `listing` (directories from S3), `open`
//!   (open handles and reads), `readahead` (directories read in order), `error` (errno
//!   mapping), `metrics` (read latency); `.cache-stats` in `mod.rs`.
//! - [`cache`]: the read-through cache behind the [`cache::Cache`] facade (`mod.rs`):
//!   `handle` (what an open returns), `download` and `fill` (one download per key, its
//!   ranged GETs), `direct` (reads straight from S3), `disk` (the directory, the LRU
//!   index and its redb copy kept in agreement: group commits, eviction, TTL, the check
//!   at start), `layout`, `index`, `db`, `key`, `stats` (the `.cache-stats` counters),
//!   `config`, `metrics` (first-byte latency, download speed); [`cache::inspect`] reads an
//!   unmounted cache directory; [`cache::shared`] the tier many hosts share in a bucket
//!   (block format, reads, uploads, gc), asked between the local cache and the origin
//!   inside a fill (`fill/shared.rs`).
//! - [`store`]: the [`store::ObjectStore`] trait and its S3 implementation; the only
//!   module that sees the AWS SDK. `store::metrics`: S3 request latency, retries and
//!   throttles, and the bounded `bucket` label every layer's metrics use.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fs;
pub mod fstab;
pub mod fuse;
pub mod metrics;
pub mod mount;
pub mod store;
pub mod warming;
