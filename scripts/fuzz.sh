#!/usr/bin/env bash
# `make fuzz`: runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer, AddressSanitizer) for
# FUZZ_SECONDS each (default 60), one process at a time, then merges what found new coverage
# into fuzz/corpus/<target>/ (libFuzzer's -merge=1 keeps only inputs that add coverage, so the
# committed corpora stay small). Prints the executions per target. A crash stops that target,
# leaves its input in fuzz/artifacts/<target>/ and makes the script fail after the others ran.
#   FUZZ_SECONDS=300 make fuzz          every target, 5 minutes each
#   FUZZ_TARGETS="predict snapshot" make fuzz
# Not part of `make test`; tests/fuzz_corpora.rs replays the corpora there. docs/fuzzing.md.
set -uo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"predict kserve_grpc rest_tfs rest_kserve http_head config snapshot"}
WORK=fuzz/target/work
BIN=fuzz/target/x86_64-unknown-linux-gnu/release
# The seqcore crate without the OpenVINO shim (build.rs): the decoders need no runtime.
export SEQCORE_WITHOUT_OPENVINO=1
# cargo-fuzz passes -Z flags (sanitizer, coverage instrumentation); the stable toolchain takes
# them with this set.
export RUSTC_BOOTSTRAP=1
# A single allocation above this is out of proportion to any input here (-max_len below).
FLAGS=(-max_total_time="$SECONDS_PER_TARGET" -max_len=8192 -timeout=10 -malloc_limit_mb=64 -rss_limit_mb=2048
  -print_final_stats=1)

(cd fuzz && cargo fuzz build) || exit 1
failed=()
summary=()
for t in $TARGETS; do
  rm -rf "${WORK:?}/$t"
  mkdir -p "$WORK/$t" "fuzz/artifacts/$t"
  log="$WORK/$t.log"
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
  (cd fuzz && cargo fuzz run "$t" "../$WORK/$t" "corpus/$t" -- "${FLAGS[@]}") >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ $rc -ne 0 ]; then
    failed+=("$t")
    summary+=("$t: FAILED after ${execs:-?} executions ($cov); see $log and fuzz/artifacts/$t/")
    grep -m1 -A12 -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|out-of-memory' "$log" | head -20
  else
    summary+=("$t: ${execs:-?} executions in ${SECONDS_PER_TARGET}s ($cov)")
  fi
  # The committed corpus: every named input (seeds, fixed crashes) and, out of the old unnamed
  # ones and this run's, a greedy minimal set covering the same edges (libFuzzer's -merge=1,
  # what `cargo fuzz cmin` runs; edges without hit counts, so it stays a few hundred files).
  min="$WORK/$t.min" old="$WORK/$t.old"
  rm -rf "$min" "$old" && mkdir -p "$min" "$old"
  for f in "fuzz/corpus/$t"/*; do
    [ -f "$f" ] || continue
    if [[ $(basename "$f") =~ ^[0-9a-f]{40}$ ]]; then mv "$f" "$old/"; else cp "$f" "$min/"; fi
  done
  if "$BIN/$t" -merge=1 -use_counters=0 -max_len=8192 -timeout=10 "$min" "$old" "$WORK/$t" >"$WORK/$t.merge.log" 2>&1; then
    rm -rf "fuzz/corpus/$t" && mv "$min" "fuzz/corpus/$t"
  else
    mv "$old"/* "fuzz/corpus/$t/" 2>/dev/null
    echo "fuzz: merging $t's corpus failed (see $WORK/$t.merge.log)"
  fi
  echo "fuzz: corpus/$t: $(find "fuzz/corpus/$t" -type f | wc -l) files"
done
printf '%s\n' "${summary[@]}"
[ ${#failed[@]} -eq 0 ] || { echo "fuzz: failed: ${failed[*]}" >&2; exit 1; }
