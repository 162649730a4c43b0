#!/usr/bin/env python3
"""What a reload costs the live sequences: paced LSTM streams on one shard while the shard's own
CPU also compiles the LSTM again and again (issue 11: "no shard stops answering while another
model compiles").

The server runs one shard on CPU 0 with `lstm`; the loadgen drives N paced streams (one 10 ms
frame per step, utterances of `--length` steps ± 50 %) from the last CPU. Windows alternate:

- quiet: nothing but the streams;
- reload: every `--every` s a config edit adds (then removes) a second LSTM model, `lstm_b`, and
  POST /v1/config/reload applies it, so each add compiles the LSTM on a loader thread pinned to
  CPU 0 at nice 19, beside the shard, and installs it; each removal unloads it.

Each window reports the streams' latency from the intended send time (p50 / p99 / p99.9 / max)
and served vs demanded steps; the reload windows also the reloads' own durations. Every answer
is an error-free step (errors are counted). Writes JSON with `--json`.

    .venv/bin/python scripts/reload_latency.py --streams 30 --pairs 3 --json /tmp/reload.json
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_matrix  # noqa: E402
from bench_matrix import ROOT, SERVER, free_port, machine, median  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=30)
    ap.add_argument("--length", type=int, default=300, help="steps per utterance (± 50 %%)")
    ap.add_argument("--secs", type=float, default=10.0, help="measured seconds per window")
    ap.add_argument("--pairs", type=int, default=3, help="quiet/reload window pairs")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between reloads in a reload window")
    ap.add_argument("--server-bin", default=str(SERVER))
    ap.add_argument("--json")
    a = ap.parse_args()

    ncpu = os.cpu_count() or 2
    client_cpu = str(ncpu - 1)
    work = tempfile.TemporaryDirectory()
    cfg_path = Path(work.name) / "config.json"
    lstm = {"name": "lstm", "base_path": str(ROOT / "models/generated/lstm"), "stateful": True,
            "max_sequence_number": 100_000, "plugin_config": {"INFERENCE_PRECISION_HINT": "f32"}}

    def write(models):
        tmp = cfg_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model_config_list": [{"config": m} for m in models]}))
        tmp.replace(cfg_path)

    write([lstm])
    port, rest = free_port(), free_port()
    log = open(Path(work.name) / "server.log", "w+")
    import subprocess
    proc = subprocess.Popen([a.server_bin, "--config_path", str(cfg_path), "--port", str(port), "--rest_port", str(rest),
                             "--grpc_bind_address", "127.0.0.1", "--cores", "1", "--cpuset", "0",
                             "--file_system_poll_wait_seconds", "0"], stderr=log, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            log.seek(0)
            text = log.read()
            if "seqcore: serving gRPC on" in text:
                break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start:\n{text}")
            time.sleep(0.1)

        def reload() -> float:
            t0 = time.perf_counter()
            req = urllib.request.Request(f"http://127.0.0.1:{rest}/v1/config/reload", method="POST", data=b"")
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
            return time.perf_counter() - t0

        def window(reloading: bool) -> dict:
            stop = threading.Event()
            durations: list = []

            def reloader():
                with_b = False
                while not stop.wait(a.every):
                    with_b = not with_b
                    write([lstm, {**lstm, "name": "lstm_b"}] if with_b else [lstm])
                    durations.append((with_b, reload()))
                if with_b:
                    write([lstm])
                    reload()

            t = threading.Thread(target=reloader)
            if reloading:
                t.start()
            r = bench_matrix.loadgen(["--addr", f"127.0.0.1:{port}", "--model", "lstm", "--cpuset", client_cpu,
                                      "--sequences", a.streams, "--step-interval-ms", 10,
                                      "--sequence-length", a.length, "--length-variation", 0.5,
                                      "--timeout-ms", 30_000], a.secs, 2.0, margin=180.0)
            stop.set()
            if reloading:
                t.join()
            lat = r["latency_us"]
            row = {
                "reloading": reloading,
                "demanded": round(r["demanded_requests_per_sec"], 1), "served": round(r["requests_per_sec"], 1),
                "p50_ms": round(lat["p50"] / 1e3, 3), "p99_ms": round(lat["p99"] / 1e3, 3),
                "p999_ms": round(lat["p99.9"] / 1e3, 3), "max_ms": round(lat.get("max", 0) / 1e3, 3),
                "errors": r["errors"]["total"],
            }
            if reloading:
                adds = [d for (b, d) in durations if b]
                row["reloads"] = len(durations)
                row["add_reload_ms_median"] = round(1e3 * median(adds), 1) if adds else None
                row["remove_reload_ms_median"] = round(1e3 * median([d for (b, d) in durations if not b] or [0]), 1)
            print(f"reload_latency: {json.dumps(row)}", flush=True)
            return row

        rows = []
        for _ in range(a.pairs):
            rows.append(window(False))
            rows.append(window(True))
        log.seek(0)
        precision = next((ln.split("inference precision ", 1)[1].split(",")[0]
                          for ln in log.read().splitlines() if "inference precision " in ln), "?")
        out = {"machine": machine(), "precision": precision, "streams": a.streams, "secs": a.secs,
               "every_s": a.every, "rows": rows}
        print(f"\n{out['machine']['cpu']}, {precision}, 1 shard on CPU 0, {a.streams} streams x 100 steps/s")
        print("| window | served / demanded | p50 ms | p99 ms | p99.9 ms | max ms | errors | reloads (add median ms) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            extra = f"{r['reloads']} ({r['add_reload_ms_median']})" if r["reloading"] else ""
            print(f"| {'reload' if r['reloading'] else 'quiet'} | {r['served']} / {r['demanded']} | {r['p50_ms']} | "
                  f"{r['p99_ms']} | {r['p999_ms']} | {r['max_ms']} | {r['errors']} | {extra} |")
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
