//! seqcore: a thread-per-core server for stateful OpenVINO models. See ARCHITECTURE.md.

// `unsafe` is allowed in exactly two places: the OpenVINO layer (`ov`) and the vectored write in
// `grpc::io` (glommio has no writev). Everything else is checked by the compiler.
#![deny(unsafe_code)]

pub mod catalog;
pub mod config;
pub mod error;
// The fuzz targets' entry points (fuzz/, tests/fuzz_corpora.rs); nothing in the server calls it.
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod kserve;
#[cfg(test)]
mod layering;
pub mod metrics;
#[macro_use]
pub mod log;
pub mod ov;
pub mod plan;
pub mod proto;
pub mod request;
pub mod rest;
pub mod sched;
pub mod sequence;
pub mod server;
pub mod service;
pub mod shard;
pub mod signature;
pub mod snapshot;
pub mod status;
pub mod tfs;
pub mod tls;
pub mod topology;
pub mod tune;
