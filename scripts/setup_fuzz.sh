#!/usr/bin/env bash
# What `make fuzz` needs on top of `make setup`, idempotently: cargo-fuzz (the libFuzzer driver
# for cargo), installed from crates.io with its own lock file. Not part of `make setup`: only the
# fuzzing uses it. The fuzz build itself runs on the stable toolchain with RUSTC_BOOTSTRAP=1
# (cargo-fuzz passes -Z flags for the sanitizer and the coverage instrumentation).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup_fuzz: installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version
