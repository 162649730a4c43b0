//! seqcore: a thread-per-core server for stateful OpenVINO models. See ARCHITECTURE.md.

pub mod grpc;
pub mod ov;
pub mod proto;
