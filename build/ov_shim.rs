//! Builds `libseqcore_ov.so`, our C++ shim over OpenVINO's public C++ API (ov_shim/), as a
//! shared library in OUT_DIR. `src/ov/` embeds it with `include_bytes!` and dlopens it at
//! runtime after loading libopenvino itself, so the Rust binary is never linked against
//! OpenVINO: it starts without it and reports a clear error instead.
//!
//! The headers and the link-time libopenvino come from the OpenVINO PyPI wheel in the project
//! venv (`make setup`), or from `SEQCORE_OPENVINO_WHEEL` (the wheel's `openvino/` package dir).

use std::path::{Path, PathBuf};

/// The runtime library the shim is linked against (the wheel ships no unversioned symlink).
const OPENVINO_LIB: &str = "libopenvino.so.2641";

pub fn build() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));

    println!("cargo:rerun-if-env-changed=SEQCORE_OPENVINO_WHEEL");
    println!("cargo:rerun-if-env-changed=SEQCORE_WITHOUT_OPENVINO");
    println!("cargo:rerun-if-changed=build/ov_shim.rs");
    println!("cargo:rerun-if-changed=ov_shim/seqcore_ov.cpp");
    println!("cargo:rerun-if-changed=ov_shim/seqcore_ov.h");
    println!("cargo:rustc-env=SEQCORE_OV_RUNTIME_DEFAULT={}", manifest.join(".ov-runtime").display());

    let shim = out_dir.join("libseqcore_ov.so");
    // The shard core's unit tests need no OpenVINO (they run a fake engine): with this set, the
    // build needs no wheel either, and the binary embeds an empty shim that refuses to load
    // with a message naming `make setup`.
    if std::env::var_os("SEQCORE_WITHOUT_OPENVINO").is_some_and(|v| v == "1") {
        std::fs::write(&shim, b"").unwrap_or_else(|e| panic!("cannot write {}: {e}", shim.display()));
        return;
    }

    let wheel = find_wheel(&manifest);
    let include = wheel.join("include");
    let libs = wheel.join("libs");
    let lib = libs.join(OPENVINO_LIB);
    if !include.join("openvino/openvino.hpp").is_file() || !lib.is_file() {
        panic!(
            "OpenVINO wheel at {} lacks include/openvino/openvino.hpp or libs/{OPENVINO_LIB}: run 'make setup'",
            wheel.display()
        );
    }
    // A reinstalled wheel must rebuild the shim.
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rerun-if-changed={}", include.join("openvino/core/version.hpp").display());

    let abi = cxx11_abi(&lib);

    // cc picks the C++ compiler (honouring CXX / CXX_<target>) and target flags; we drive the
    // shared-library link ourselves, since cc only produces static archives.
    let compiler = cc::Build::new().cpp(true).opt_level(2).debug(false).pic(true).warnings(false).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall"])
        .arg(format!("-D_GLIBCXX_USE_CXX11_ABI={}", abi as u8))
        .arg("-isystem")
        .arg(&include)
        .arg(manifest.join("ov_shim/seqcore_ov.cpp"))
        .arg("-o")
        .arg(&shim)
        .arg(format!("-L{}", libs.display()))
        .arg(format!("-l:{OPENVINO_LIB}"))
        // Every symbol must resolve against libopenvino/libstdc++ now, not at dlopen time.
        .arg("-Wl,-z,defs")
        .arg("-Wl,--strip-all");
    let output =
        cmd.output().unwrap_or_else(|e| panic!("cannot run the C++ compiler ({cmd:?}): {e}; run 'make setup'"));
    if !output.status.success() {
        panic!(
            "building the OpenVINO shim failed: {cmd:?}\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `SEQCORE_OPENVINO_WHEEL`, else `<manifest>/.venv/lib/python3*/site-packages/openvino`.
fn find_wheel(manifest: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("SEQCORE_OPENVINO_WHEEL") {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            panic!("SEQCORE_OPENVINO_WHEEL={} is not a directory: run 'make setup'", dir.display());
        }
        return dir;
    }
    let lib = manifest.join(".venv/lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/openvino"))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    match found.pop() {
        Some(dir) => dir,
        None => panic!(
            "OpenVINO wheel not found in {}/python3*/site-packages/openvino: run 'make setup' (or set SEQCORE_OPENVINO_WHEEL)",
            lib.display()
        ),
    }
}

/// Whether libopenvino was built with the C++11 `std::string` ABI (its exported symbols then
/// mention `__cxx11`, as `nm -D` shows for 2026.4.1). The shim must match it, since
/// `std::string` crosses into libopenvino.
fn cxx11_abi(lib: &Path) -> bool {
    let bytes = std::fs::read(lib).unwrap_or_else(|e| panic!("cannot read {}: {e}", lib.display()));
    bytes.windows(7).any(|w| w == b"__cxx11")
}
