//! Build script: compiles our trimmed `.proto` files with prost (parsed by `protox`, so no system
//! `protoc` is needed) and builds the C++ shim over OpenVINO's C++ API (see ARCHITECTURE.md,
//! "OpenVINO runtime").

// A build script reports failure by panicking, with a message naming the fix.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

#[path = "build/ov_shim.rs"]
mod ov_shim;
#[path = "build/proto.rs"]
mod proto;

fn main() {
    proto::build();
    ov_shim::build();
}
