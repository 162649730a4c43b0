#!/usr/bin/env bash
# make bench-load: the reference measurements of docs/loadgen.md.
# A 1-shard seqcore on CPU $SERVER_CPU (port $PORT), the loadgen on CPU $CLIENT_CPU; summator and
# lstm, one client and many sequences, closed loop; then the same models raw (in-process
# OpenVINO on the client CPU). Results: JSON per scenario in $OUT, a summary table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-9100}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
OUT=${OUT:-target/bench-load}
SEQCORE=target/release/seqcore
LOADGEN=target/release/loadgen
mkdir -p "$OUT"

"$SEQCORE" --config_path models/config.json --port "$PORT" --grpc_bind_address 127.0.0.1 \
  --cores 1 --cpuset "$SERVER_CPU" --log_level WARNING 2>"$OUT/seqcore.stderr" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "serving gRPC on" "$OUT/seqcore.stderr" && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/seqcore.stderr"; exit 1; }
  sleep 0.1
done

run() { # name, loadgen args...
  local name=$1; shift
  echo "== $name: $*" >&2
  "$LOADGEN" --addr "127.0.0.1:$PORT" --cpuset "$CLIENT_CPU" --warmup-secs "$WARMUP" \
    --duration-secs "$SECS" --quiet --json "$OUT/$name.json" --csv "$OUT/$name.csv" "$@" >"$OUT/$name.txt"
  cat "$OUT/$name.txt"
}
run summator-1     --model summator --sequences 1  --verify
run summator-64    --model summator --sequences 64 --verify
run lstm-1         --model lstm     --sequences 1
run lstm-16        --model lstm     --sequences 16
run raw-summator-1  --raw --model summator --sequences 1 --verify
run raw-summator-64 --raw --model summator --sequences 64 --verify
run raw-lstm-1      --raw --model lstm --sequences 1
run raw-lstm-16     --raw --model lstm --sequences 16

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = ["summator-1", "summator-64", "lstm-1", "lstm-16",
        "raw-summator-1", "raw-summator-64", "raw-lstm-1", "raw-lstm-16"]
print(f"{'scenario':<18}{'req/s':>11}{'p50 µs':>10}{'p99 µs':>10}{'p99.9 µs':>10}{'errors':>8}{'verify':>8}")
for r in rows:
    j = json.loads((out / f"{r}.json").read_text())
    l = j["latency_us"]
    print(f"{r:<18}{j['requests_per_sec']:>11.0f}{l['p50']:>10.1f}{l['p99']:>10.1f}{l['p99.9']:>10.1f}"
          f"{j['errors']['total']:>8}{j['verify_failures']:>8}")
PY
