#!/usr/bin/env python3
"""Before/after comparison of two seqcore binaries with `make bench`'s own measurements, in
alternated rounds on the same machine (a shared VM's speed drifts within minutes, so A and B
take turns and each figure is a median over rounds).

Per round and binary, on a 1-shard server on CPU 0 with the loadgen on CPU 1:
- P1: summator, closed loop, 64 sequences on one connection: server CPU per request, and P1
  within the run (server CPU per request − the server's own OpenVINO time per step);
- one client: summator and lstm, one sequence, one request in flight: p50 / p99.

    scripts/ab_servers.py --a /path/to/old/seqcore --b target/release/seqcore --rounds 3

The runtime of an older checkout is found through SEQCORE_OPENVINO_DIR (set it to this repo's
.ov-runtime). The loadgen is this repo's `target/release/loadgen` for both binaries.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_matrix as bm  # noqa: E402


def one_binary(binary: Path, secs: float) -> dict:
    bm.SERVER = binary
    server = bm.Server(1, "0")
    try:
        ov0, n0 = bm.model_counters(server.addr, "summator", "openvino_ns", "steps")
        p1 = bm.served_run(server, "summator", "1", secs, sequences=64, sequence_length=100)
        ov1, n1 = bm.model_counters(server.addr, "summator", "openvino_ns", "steps")
        out = {
            "p1_rps": p1["requests_per_sec"],
            "p1_server_cpu_us": p1["server_cpu_us_per_request"],
            "p1_within_us": p1["server_cpu_us_per_request"] - (ov1 - ov0) / 1e3 / max(n1 - n0, 1),
        }
        for model in ("summator", "lstm"):
            m = bm.served_run(server, model, "1", secs, sequences=1, sequence_length=100)
            out[f"{model}_p50"] = m["latency_us"]["p50"]
            out[f"{model}_p99"] = m["latency_us"]["p99"]
        return out
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, type=Path, help="the 'before' binary")
    ap.add_argument("--b", required=True, type=Path, help="the 'after' binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--json", type=Path, help="write every round here")
    a = ap.parse_args()
    rows = {"a": [], "b": []}
    for i in range(a.rounds):
        order = ("a", "b") if i % 2 == 0 else ("b", "a")
        for who in order:
            print(f"ab: round {i + 1}/{a.rounds} {who}", flush=True)
            rows[who].append(one_binary(getattr(a, who), a.secs))
    keys = list(rows["a"][0])
    print(f"{'figure':22} {'before (median, range)':>30} {'after (median, range)':>30}")
    for k in keys:
        cells = []
        for who in ("a", "b"):
            xs = [r[k] for r in rows[who]]
            cells.append(f"{bm.median(xs):9.2f} ({min(xs):.1f}…{max(xs):.1f})")
        print(f"{k:22} {cells[0]:>30} {cells[1]:>30}")
    info = bm.machine()
    print(f"machine: {info}")
    if a.json:
        a.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("SEQCORE_OPENVINO_DIR", str(bm.ROOT / ".ov-runtime"))
    main()
