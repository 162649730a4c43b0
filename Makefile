# seqcore — the two commands a newcomer needs:
#   make run    installs what is missing, builds in release mode, serves the demo models
#   make test   installs what is missing and runs the whole suite (what CI runs)
# Both are idempotent. Long benchmarks and soaks have their own targets.

VENV      := .venv
PYTHON    := $(VENV)/bin/python
BIN       := target/release/seqcore
CHECKED   := target/checked
PORT      ?= 9000
REST_PORT ?= 8000
ARGS      ?=

.PHONY: setup build run test lint test-core test-rust test-py bench bench-bf16 bench-load soak fuzz clean help

help:
	@echo "make run     build and serve models/config.json on 127.0.0.1:$(PORT) (gRPC) and :$(REST_PORT) (REST)"
	@echo "make test    run the whole test suite (lint, unit tests without OpenVINO, Rust and Python suites)"
	@echo "make lint    cargo fmt --check and clippy -D warnings with the house lints"
	@echo "make setup   install Debian packages, the Python venv (OpenVINO) and generate models"
	@echo "make bench  the performance matrix (docs/performance.md) and micro-benchmarks"
	@echo "make bench-bf16  the bf16 figures (docs/bf16.md); needs a CPU with avx512_bf16 or amx_bf16"
	@echo "make bench-load  reference load measurements with target/release/loadgen (docs/loadgen.md)"
	@echo "make soak   the full soak (scripts/soak.py): 12000 streams, every protocol, faults, every answer verified"
	@echo "make fuzz   every fuzz target for FUZZ_SECONDS (default 60) each (docs/fuzzing.md)"

setup:
	@scripts/setup.sh

build: setup
	cargo build --release --locked --workspace

run: build
	$(BIN) --config_path models/config.json --port $(PORT) --rest_port $(REST_PORT) --grpc_bind_address 127.0.0.1 $(ARGS)

# The suite runs the `checked` build (release speed, debug assertions and overflow checks on),
# so every debug_assert! runs under test traffic; `make run` and `make bench` use `release`.
test: setup lint test-core test-rust test-py

# House rules: rustfmt, and clippy with the [lints] table of Cargo.toml (clippy.toml).
lint:
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

# The crate's unit tests (the shard core on a fake engine, the codecs) built without OpenVINO:
# proves they need no wheel. A separate target dir, so the two builds do not rebuild each other.
test-core:
	SEQCORE_WITHOUT_OPENVINO=1 CARGO_TARGET_DIR=target/no-openvino cargo test --locked --lib

test-rust:
	cargo test --profile checked --locked --workspace

test-py:
	cargo build --profile checked --locked --workspace
	SEQCORE_BIN=$(CHECKED)/seqcore LOADGEN_BIN=$(CHECKED)/loadgen $(PYTHON) -m pytest tests/py -q

# The standard performance matrix (models x shards x closed/open loop, raw baseline, P1-P4,
# the loadgen checked against h2load) written to docs/performance.md with SVG plots; the real-time
# capacity (paced streams against the raw limit, scripts/capacity.py) into the same file; then the
# micro-benchmarks (criterion). scripts/setup_bench.sh installs h2load (nghttp2-client).
bench: build
	scripts/setup_bench.sh
	$(PYTHON) scripts/bench_matrix.py
	$(PYTHON) scripts/capacity.py --report --label "make bench"
	cargo bench --locked

# The bf16 figures (issue 9; docs/bf16.md): drift, swap cost, batched steps and real-time capacity
# in bf16 with f32 beside them, and the capacity of an earlier build, all in one run of about an
# hour. OpenVINO runs bf16 only on CPUs with avx512_bf16 or amx_bf16 (an Intel Xeon with AMX), so
# elsewhere it refuses to start (exit 2); BF16_ARGS=--check runs the plumbing anywhere with short
# durations, into target/bf16-check/ only.
BF16_ARGS ?=
bench-bf16: build
	$(PYTHON) scripts/bench_bf16.py $(BF16_ARGS)

# Reference load measurements (docs/loadgen.md): 1-shard server on CPU 0, loadgen on CPU 1.
bench-load: build
	loadgen/bench-load.sh

# The full soak (a bounded one runs in make test, tests/py/test_soak.py): 12000 paced streams
# over the five protocols, one step each every 4 s (3000 steps/s; 6000/s also passes on a 2-CPU
# machine with the clients on it too, but near saturation: p99 0.1-0.2 s, max 3 s) for
# SOAK_SECONDS (default 360, about 1.1 million verified answers), cancellations, disconnects and
# SIGKILLed vandal clients; the report goes to SOAK_JSON. The idle timeout is 10 s: when the
# loadgens stop, every live sequence sends its END at once (12000 in one burst), and a burst
# that takes over a second on 2 CPUs would time out sequences whose END waits in it if the
# timeout left only 1 s beyond the 4 s interval.
SOAK_SECONDS ?= 360
SOAK_JSON    ?= target/soak.json
soak: build
	$(PYTHON) scripts/soak.py --duration $(SOAK_SECONDS) --streams 12000 --interval-ms 4000 \
		--sequence-timeout 10 --min-requests 1000000 --min-sequences 10000 --json $(SOAK_JSON)

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer; docs/fuzzing.md): every target of fuzz/ for
# FUZZ_SECONDS each, what adds coverage merged into fuzz/corpus/. Not part of `make test`: the
# corpora are replayed there by tests/fuzz_corpora.rs. scripts/setup_fuzz.sh installs cargo-fuzz.
fuzz:
	scripts/setup_fuzz.sh
	scripts/fuzz.sh

clean:
	cargo clean
	rm -rf models/generated .ov-runtime
