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
    --duration-secs "$SECS" --quiet --json "$OUT/$name.json" --csv "$OUT/$name.csv" \
    --server-pid "$SERVER" "$@" >"$OUT/$name.txt"
  cat "$OUT/$name.txt"
}
# Defaults first (one connection, the client parks when idle), then the server's capacity: four
# connections and a spinning client, so that neither the client's wake-ups nor one connection's
# request/response rounds leave the server idle.
run summator-1        --model summator --sequences 1  --verify
run summator-1-spin   --model summator --sequences 1  --verify --spin-us 1000
run summator-64       --model summator --sequences 64 --verify
run summator-64-c4    --model summator --sequences 64 --verify --connections-per-core 4 --spin-us 1000
run lstm-1            --model lstm     --sequences 1
run lstm-16           --model lstm     --sequences 16
run lstm-16-c4        --model lstm     --sequences 16 --connections-per-core 4 --spin-us 1000
run raw-summator-1  --raw --model summator --sequences 1 --verify
run raw-summator-64 --raw --model summator --sequences 64 --verify
run raw-lstm-1      --raw --model lstm --sequences 1
run raw-lstm-16     --raw --model lstm --sequences 16

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = ["summator-1", "summator-1-spin", "summator-64", "summator-64-c4", "lstm-1", "lstm-16", "lstm-16-c4",
        "raw-summator-1", "raw-summator-64", "raw-lstm-1", "raw-lstm-16"]
print(f"{'scenario':<18}{'req/s':>10}{'p50 µs':>10}{'p99 µs':>10}{'p99.9 µs':>10}{'srv µs/req':>11}"
      f"{'srv cpu':>8}{'cli cpu':>8}{'err':>5}{'vfail':>6}  loadavg")
for r in rows:
    j = json.loads((out / f"{r}.json").read_text())
    l = j["latency_us"]
    per = j.get("server_cpu_us_per_request")
    srv = j.get("server_cpu_util")
    print(f"{r:<18}{j['requests_per_sec']:>10.0f}{l['p50']:>10.1f}{l['p99']:>10.1f}{l['p99.9']:>10.1f}"
          f"{per if per is not None else '-':>11}{srv if srv is not None else '-':>8}{j['client_cpu_util']:>8}"
          f"{j['errors']['total']:>5}{j['verify_failures']:>6}  {j['host']['loadavg_before'].split()[0]}")
PY
