//! Compiles our own `.proto` files under `proto/` into Rust with prost.
//!
//! The files are parsed by `protox` (pure Rust, so no system `protoc` is needed); prost-build then
//! generates code from the resulting file descriptor set. `google.protobuf.*` well-known types
//! (Int64Value, Any) come from protox's bundled copies and map to `::prost_types`.
//!
//! Every `bytes` field is generated as `bytes::Bytes`, so decoding from a `Bytes` buffer slices it
//! instead of copying (`tensor_content` can be large).

use std::path::PathBuf;

/// The root files; their imports are pulled in by protox.
const PROTOS: &[&str] = &[
    "tensorflow_serving/apis/prediction_service.proto",
    "tensorflow_serving/apis/model_service.proto",
    "seqcore/introspection.proto",
    "kserve/grpc_predict_v2.proto",
];

pub fn build() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let proto_dir = root.join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    println!("cargo:rerun-if-changed={}", root.join("build/proto.rs").display());

    let fds = match protox::compile(PROTOS, [&proto_dir]) {
        Ok(fds) => fds,
        Err(e) => panic!("parsing protos under {}: {e:?}", proto_dir.display()),
    };

    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    if let Err(e) = config.compile_fds(fds) {
        panic!("generating Rust from protos: {e}");
    }
}
