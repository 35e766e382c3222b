//! All integration tests in one binary (one link of the AWS SDK, shared helpers).
//! They run against a real S3-protocol server on 127.0.0.1 (see `support/s3server.rs`).

#[path = "../support/s3server.rs"]
mod s3server;

mod cache_engine;
mod common;
mod faults;
mod index_model;
mod inprocess;
mod metrics;
mod mount;
mod offline;
mod ops;
mod shared;
mod trust;
