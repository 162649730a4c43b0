#!/usr/bin/env python3
"""Real-time capacity: how many paced speech streams one seqcore shard (or two) carries.

The workload seqcore exists for (issue 9): N streams, each sending one step every F ms (a 10 ms
frame to `lstm`, or a 40 / 160 ms chunk of 4 / 16 frames to `lstm_chunk4` / `lstm_chunk16`),
from a random phase with a little jitter, utterances of `--length` steps ± 50 %, one after
another, so STARTs and ENDs happen all through the run (loadgen `--step-interval-ms`).

For each N: demanded and served steps/s, latency from each step's intended send time
(p50/p99/p99.9), how late steps went out (send lag), server CPU per step. **Capacity** is the
largest N whose p99 stays under F with no backlog (served ≥ 99 % of demanded, send-lag p99 < F).
Beside it the **raw limit** on the same core and precision: F over the step time in-process with
every state resident (loadgen `--raw --raw-resident`), measured before and after the sweep.

The search: N from 30 % of the raw limit upward in 10 % steps until a run fails, then bisection
between the last pass and the first failure. The server runs on CPU 0 (2 shards: CPUs 0-1), the
loadgen on the last CPU. Every run is bounded (`--secs` measured after `--warmup` s).

Writes JSON (`--json`) and, with `--report`, the "Real-time capacity" section of
docs/performance.md (between its markers) with SVG plots of p99 latency and CPU per step
against N.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_matrix  # noqa: E402
from bench_matrix import (ROOT, SERVER, Server, machine, median, proc_cpu_secs, server_stats,  # noqa: E402
                          svg_plot)

WORKLOADS = {  # interval ms -> model (one request carries interval / 10 ms of frames)
    10: "lstm",
    40: "lstm_chunk4",
    160: "lstm_chunk16",
}
BEGIN, END = "<!-- capacity:begin -->", "<!-- capacity:end -->"


def start_server(binary: Path, model: str, shards: int, cpuset: str, precision: str, extra_args=(),
                 max_batch_size: int = 1, max_queue_delay_us: int = 0):
    """bench_matrix's server with one model, `precision` pinned; `.precision` is what it ran."""
    cfg = {"name": model, "base_path": str(ROOT / "models" / "generated" / model), "stateful": True,
           "max_sequence_number": 100_000}
    if max_batch_size > 1:
        cfg["max_batch_size"] = max_batch_size
        cfg["max_queue_delay_us"] = max_queue_delay_us
    if precision != "default":
        cfg["plugin_config"] = {"INFERENCE_PRECISION_HINT": precision}
    srv = Server(shards, cpuset, extra_args=extra_args, models=[cfg], binary=binary)
    srv.precision = next((ln.split("inference precision ")[1].split(",")[0]
                          for ln in srv.started_log.splitlines() if "inference precision " in ln), "?")
    return srv


def loadgen(args, secs, warmup):
    # Paced runs drain with requests of up to 30 s (--timeout-ms): a longer margin.
    return bench_matrix.loadgen(args, secs, warmup, margin=180.0)


def raw_limit(model, interval_ms, cpu, precision, secs):
    """F over the in-process step time, state resident (32 sequences, one request each)."""
    pin = [] if precision == "default" else ["--raw-precision", precision]
    r = loadgen(["--raw", "--raw-resident", "--model", model, "--models-dir", ROOT / "models" / "generated",
                 "--sequences", 32, "--sequence-length", 1000, "--cpuset", cpu, *pin], secs, 1.0)
    step_us = 1e6 / r["requests_per_sec"]
    return {"step_us": round(step_us, 1), "streams": interval_ms * 1000 / step_us}


def counters(server, model):
    """steps, OpenVINO ns and swaps of `model` summed over shards (swaps: 0 on servers that
    predate them)."""
    ms = [m for sh in server_stats(f"127.0.0.1:{server.port}")["shards"] for m in sh["models"] if m["name"] == model]
    return [sum(m.get(k, 0) for m in ms) for k in ("steps", "openvino_ns", "swaps_in")]


def paced(server, model, n, interval_ms, length, client_cpu, secs, warmup):
    c0 = counters(server, model)
    cpu0 = proc_cpu_secs(server.proc.pid)
    r = loadgen(["--addr", f"127.0.0.1:{server.port}", "--model", model, "--cpuset", client_cpu,
                 "--sequences", n, "--step-interval-ms", interval_ms, "--sequence-length", length,
                 "--length-variation", 0.5, "--timeout-ms", 30_000], secs, warmup)
    cpu = proc_cpu_secs(server.proc.pid) - cpu0
    steps, ov_ns, swaps = (b - a for a, b in zip(c0, counters(server, model)))
    lat, lag = r["latency_us"], r["send_lag_us"]
    demanded = r["demanded_requests_per_sec"]
    served = r["requests_per_sec"]
    row = {
        "streams": n, "demanded": round(demanded, 1), "served": round(served, 1),
        "served_fraction": round(served / demanded, 4) if demanded else 0.0,
        "p50_ms": round(lat["p50"] / 1e3, 3), "p99_ms": round(lat["p99"] / 1e3, 3),
        "p999_ms": round(lat["p99.9"] / 1e3, 3),
        "send_lag_p99_ms": round(lag["p99"] / 1e3, 3),
        "server_cpu_us_per_step": round(cpu * 1e6 / max(steps, 1), 1),
        # Inside OpenVINO (restore/save, copies, infer) per step; the rest is the server's own.
        "openvino_us_per_step": round(ov_ns / 1e3 / max(steps, 1), 1),
        "swaps_per_step": round(swaps / max(steps, 1), 3),
        "errors": r["errors"]["total"],
    }
    row["ok"] = (row["p99_ms"] < interval_ms and row["served_fraction"] >= 0.99
                 and row["send_lag_p99_ms"] < interval_ms and row["errors"] == 0)
    return row


def search(a, interval_ms, shards, batch=1):
    model = WORKLOADS[interval_ms]
    max_fraction = a.max_fraction if batch == 1 else max(a.max_fraction, a.max_fraction_batched)
    ncpu = os.cpu_count() or 2
    server_cpus = "0" if shards == 1 else f"0-{shards - 1}"
    client_cpu = str(ncpu - 1)
    raw_before = raw_limit(model, interval_ms, "0", a.precision, a.raw_secs)
    limit = raw_before["streams"] * shards
    srv = start_server(Path(a.server_bin), model, shards, server_cpus, a.precision, a.server_arg,
                       batch, a.max_queue_delay_us)
    rows = {}
    try:
        def run(n):
            n = max(1, int(round(n)))
            if n not in rows:
                rows[n] = paced(srv, model, n, interval_ms, a.length, client_cpu, a.secs, a.warmup)
                print(f"capacity: F {interval_ms} ms, {shards} shard(s), batch {batch}, {n} streams: {json.dumps(rows[n])}",
                      flush=True)
            return rows[n]

        passed, failed = 0, None
        frac = 0.3
        while frac <= max_fraction + 1e-9:
            n = max(1, int(round(limit * frac)))
            if run(n)["ok"]:
                passed = max(passed, n)
                frac += 0.1
            else:
                failed = n
                break
        lo, hi = passed, failed
        while hi is not None and hi - lo > max(1, int(0.03 * limit)):
            mid = (lo + hi) // 2
            if mid in (lo, hi):
                break
            if run(mid)["ok"]:
                lo = mid
            else:
                hi = mid
        capacity = max([n for n, r in rows.items() if r["ok"] and n <= lo] or [0])
    finally:
        precision = srv.precision
        srv.stop()
    raw_after = raw_limit(model, interval_ms, "0", a.precision, a.raw_secs)
    raw_streams = median([raw_before["streams"], raw_after["streams"]]) * shards
    return {
        "interval_ms": interval_ms, "model": model, "shards": shards, "precision": precision,
        "max_batch_size": batch, "max_queue_delay_us": a.max_queue_delay_us if batch > 1 else 0,
        "server_cpus": server_cpus, "client_cpu": client_cpu,
        "raw": {"before": raw_before, "after": raw_after, "limit_streams": round(raw_streams, 1)},
        "capacity_streams": capacity,
        "capacity_over_raw": round(capacity / raw_streams, 3) if raw_streams else 0.0,
        "rows": [rows[n] for n in sorted(rows)],
    }


def section(results, host, label, before=None, plots="capacity", markers=True):
    """The report's text; `plots`: the SVGs' name prefix (write_plots); `markers`: between
    BEGIN and END, as performance.md holds it."""
    lines = ([BEGIN] if markers else []) + ["## Real-time capacity (paced streams)", "",
             f"`scripts/capacity.py` ({label}): {host['cpu']}, {host['cpus']} CPUs, kernel {host['kernel']}, "
             f"commit {host['commit']}, {host['date']}. Streams step every F ms from a random phase with "
             "0.5 ms jitter, utterances of 300 steps ± 50 % back to back; the server on CPU 0 (2 shards: "
             "CPUs 0-1, sharing CPU 1 with the loadgen on a 2-CPU machine), the loadgen on the last CPU. "
             "Capacity: the most streams with p99 < F, ≥ 99 % of the demanded steps served and send-lag "
             "p99 < F. Raw limit: F over the in-process step time with every state resident, on CPU 0, "
             "before and after the sweep (median), times the shards. Where a paced step's time goes, and "
             "what would raise capacity: docs/profile.md, \"Paced streams\". Batch: the model's "
             "`max_batch_size` (1: every step alone; 8: steps of different streams that are queued together "
             "run as one inference, docs/batching.md); the raw limit is always the step alone.", "",
             "| F | model | shards | batch | precision | raw step (µs) | raw limit (streams) | capacity | capacity ÷ raw |"
             + (f" {before['label']}: capacity (÷ raw) |" if before else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if before else "")]
    earlier = {(b["interval_ms"], b["shards"], b.get("max_batch_size", 1)): b
               for b in (before or {}).get("results", [])}
    for r in results:
        old = earlier.get((r["interval_ms"], r["shards"], r.get("max_batch_size", 1)))
        lines.append(f"| {r['interval_ms']} ms | {r['model']} | {r['shards']} | {r.get('max_batch_size', 1)} | "
                     f"{r['precision']} | "
                     f"{r['raw']['before']['step_us']} / {r['raw']['after']['step_us']} | {r['raw']['limit_streams']} | "
                     f"{r['capacity_streams']} | {r['capacity_over_raw']} |"
                     + (f" {old['capacity_streams']} ({old['capacity_over_raw']}) |" if old else (" – |" if before else "")))
    for r in results:
        lines += ["", f"F = {r['interval_ms']} ms ({r['model']}), {r['shards']} shard(s), batch "
                  f"{r.get('max_batch_size', 1)}, {r['precision']}:", "",
                  "| streams | demanded/s | served/s | p50 ms | p99 ms | p99.9 ms | send lag p99 ms | server CPU µs/step | in OpenVINO µs/step | swaps/step | ok |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["rows"]:
            lines.append(f"| {x['streams']} | {x['demanded']} | {x['served']} | {x['p50_ms']} | {x['p99_ms']} | "
                         f"{x['p999_ms']} | {x['send_lag_p99_ms']} | {x['server_cpu_us_per_step']} | "
                         f"{x['openvino_us_per_step']} | {x['swaps_per_step']} | {'yes' if x['ok'] else 'no'} |")
    lines += ["", f"![p99 latency against streams]({plots}-p99.svg)", "",
              f"![server CPU per step against streams]({plots}-cpu.svg)", ""] + ([END] if markers else [])
    return "\n".join(lines) + "\n"


def write_plots(results, directory: Path, prefix="capacity"):
    """`prefix`-p99.svg and `prefix`-cpu.svg in `directory`: p99 and CPU per step against N."""
    key = lambda r: f"F {r['interval_ms']} ms, {r['shards']} shard(s), batch {r.get('max_batch_size', 1)}"  # noqa: E731
    svg_plot(directory / f"{prefix}-p99.svg", "p99 latency from the intended send time", "streams", "p99 (ms)",
             {key(r): [(x["streams"], min(x["p99_ms"], 4 * r["interval_ms"])) for x in r["rows"]] for r in results})
    svg_plot(directory / f"{prefix}-cpu.svg", "server CPU per step", "streams", "µs per step",
             {key(r): [(x["streams"], x["server_cpu_us_per_step"]) for x in r["rows"]] for r in results})


def write_report(results, host, label, doc: Path, before=None):
    write_plots(results, doc.parent)
    text = doc.read_text() if doc.exists() else ""
    new = section(results, host, label, before)
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + new + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + new
    doc.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--intervals", default="10,40,160", help="F values in ms (10, 40, 160)")
    p.add_argument("--shards", default="1,2", help="shard counts")
    p.add_argument("--precision", default="f32", help="f32, bf16 or default (OpenVINO's choice for this CPU)")
    p.add_argument("--length", type=int, default=300, help="utterance length in steps (± 50 %%)")
    p.add_argument("--secs", type=float, default=6.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--raw-secs", type=float, default=3.0)
    p.add_argument("--max-fraction", type=float, default=1.3, help="highest N tried, as a fraction of the raw limit")
    p.add_argument("--batch-sizes", default="1,8", help="the model's max_batch_size values to search (1: no batching)")
    p.add_argument("--batched-shards", default="1", help="shard counts searched with batching (a subset of --shards)")
    p.add_argument("--max-fraction-batched", type=float, default=3.0,
                   help="highest N tried with batching, as a fraction of the raw limit (the step alone)")
    p.add_argument("--max-queue-delay-us", type=int, default=1000,
                   help="the model's max_queue_delay_us when batching (1 ms: measured best of 0, 1, 3 ms at F 10 ms)")
    p.add_argument("--server-bin", default=str(SERVER), help="the seqcore binary (e.g. an older build for 'before')")
    p.add_argument("--server-arg", action="append", default=[], help="extra server argument (repeat)")
    p.add_argument("--label", default="", help="what this run measures, for the report")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--report", action="store_true", help="rewrite the capacity section of docs/performance.md")
    p.add_argument("--render", metavar="JSON[,JSON]", help="no runs: render the report from saved --json files (merged)")
    p.add_argument("--before", metavar="JSON", help="a saved --json of an earlier build, shown beside")
    p.add_argument("--before-label", help="what the --before build was (default: its own label)")
    a = p.parse_args()
    if a.precision not in ("f32", "bf16", "default"):
        p.error("--precision: f32, bf16 or default")
    before = json.loads(Path(a.before).read_text()) if a.before else None
    if before and a.before_label:
        before["label"] = a.before_label
    if a.render:
        saved = [json.loads(Path(f).read_text()) for f in a.render.split(",")]
        merged = [r for s in saved for r in s["results"]]
        merged.sort(key=lambda r: (r["interval_ms"], r["shards"], r.get("max_batch_size", 1)))
        write_report(merged, saved[0]["host"], saved[0]["label"] or "make bench", ROOT / "docs" / "performance.md",
                     before)
        return
    results = []
    for interval in map(int, a.intervals.split(",")):
        if interval not in WORKLOADS:
            p.error(f"--intervals: {interval} is not one of {sorted(WORKLOADS)}")
        for shards in map(int, a.shards.split(",")):
            for batch in map(int, a.batch_sizes.split(",")):
                if batch > 1 and str(shards) not in a.batched_shards.split(","):
                    continue
                results.append(search(a, interval, shards, batch))
                r = results[-1]
                print(f"capacity: F {interval} ms, {shards} shard(s), batch {batch}, {r['precision']}: capacity "
                      f"{r['capacity_streams']} streams, raw limit {r['raw']['limit_streams']} "
                      f"({r['capacity_over_raw']} of it)", flush=True)
    host = machine()
    host["loadavg"] = os.getloadavg()
    if a.json:
        Path(a.json).write_text(json.dumps({"host": host, "label": a.label, "results": results}, indent=1) + "\n")
    if a.report:
        write_report(results, host, a.label or "make bench", ROOT / "docs" / "performance.md", before)


if __name__ == "__main__":
    main()
