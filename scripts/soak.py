#!/usr/bin/env python3
"""The soak: many interleaved sequences over every protocol, with faults, every answer verified.

Starts its own seqcore on the summator model (stateful, a short idle timeout) and runs, side by
side for --duration seconds:

- one verified load generator per protocol (tfs-grpc, kserve-grpc, kserve-stream, tfs-rest,
  kserve-rest): paced streams, each stepping every --interval-ms, one utterance after another of
  lengths drawn around --length, so STARTs and ENDs happen all through the run and the live
  sequences interleave; every answer is checked against its own sequence's running sum (and
  its id). A fraction of sequences is cancelled mid-call and abandoned (`--cancel-fraction`:
  RST_STREAM on HTTP/2, a closed connection on HTTP/1.1), another drops its connection
  between two steps and goes on over a new one (`--disconnect-fraction`);
- vandals: every --vandal-every seconds a load generator of a random protocol starts a few
  hundred paced sequences and is SIGKILLed after a random fraction of a second, so its
  connections die abruptly and its sequences are left to the idle timeout.

Meanwhile it samples the server's RSS and live-sequence count every second. Then it checks:
zero verification failures, zero errors in the verified clients (cancellations and
disconnects are counted apart), RSS flat while the load runs after the warm-up (the first
--warmup fraction of the run), the live count back to 0 within the idle timeout plus the expiry period after the load
stops, and no panic in the server's log. Writes a JSON report (--json), with the shards' stall
warnings and each vandal's start and kill times beside them, and exits 1 if a check fails.

`make soak` runs the full version (>= 10^4 interleaved sequences, >= 10^6 requests);
tests/py/test_soak.py runs a bounded one in `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "seqcore: serving gRPC on"

# Streams per protocol, as shares of --streams; KServe streaming holds one HTTP/2 stream per
# live sequence, so its connections are sized to stay under the server's 128 streams each.
SHARES = {"tfs-grpc": 0.30, "kserve-grpc": 0.25, "kserve-stream": 0.15, "tfs-rest": 0.15, "kserve-rest": 0.15}
STREAMS_PER_CONNECTION = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def scrape(rest_port: int, timeout: float = 30) -> tuple[int, int]:
    """From /metrics: seqcore_live_sequences summed over shards and models, and the shards'
    event-loop stalls (seqcore_shard_stalls_total) summed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    live = stalls = 0
    for line in text.splitlines():
        if line.startswith("seqcore_live_sequences"):
            live += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("seqcore_shard_stalls_total"):
            stalls += int(float(line.rsplit(" ", 1)[1]))
    return live, stalls


def live_sequences(rest_port: int) -> int:
    return scrape(rest_port)[0]


def start_server(args, work: Path) -> tuple[subprocess.Popen, int, int, Path]:
    model = ROOT / "models" / "generated" / "summator"
    cfg = {"model_config_list": [{"config": {
        "name": "summator", "base_path": str(model), "stateful": True,
        "sequence_timeout_seconds": args.sequence_timeout, "max_sequence_number": args.max_sequences,
        "plugin_config": {"INFERENCE_PRECISION_HINT": "f32"}}}]}
    (work / "config.json").write_text(json.dumps(cfg))
    port, rest_port = free_port(), free_port()
    log = work / "seqcore.stderr"
    cmd = [args.bin, "--config_path", str(work / "config.json"), "--port", str(port), "--rest_port",
           str(rest_port), "--grpc_bind_address", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while READY_LINE not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"soak: seqcore did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return proc, port, rest_port, log


CPUS = sorted(os.sched_getaffinity(0))


def loadgen_cmd(args, proto: str, port: int, rest_port: int, extra: list[str], k: int) -> list[str]:
    """A load generator's command line; its one thread pinned to the k-th allowed CPU (round
    robin), so the clients share the CPUs evenly instead of all landing on the first one."""
    addr = f"127.0.0.1:{rest_port if proto.endswith('-rest') else port}"
    return [args.loadgen, "--addr", addr, "--protocol", proto, "--model", "summator", "--cores", "1",
            "--cpuset", str(CPUS[k % len(CPUS)]), "--quiet", *extra]


def vandal_loop(args, port: int, rest_port: int, stop: threading.Event, out: dict, rng: random.Random, t0: float):
    """Starts a load generator every --vandal-every seconds and SIGKILLs it mid-run; records when
    (seconds from t0), to set beside the server's stalls."""
    while not stop.wait(args.vandal_every * (0.5 + rng.random())):
        proto = rng.choice(list(SHARES))
        n = rng.randint(50, args.vandal_sequences)
        # Paced (every 200 ms), so a vandal is about dying abruptly, not about overloading the server.
        extra = ["--sequences", str(n), "--sequence-length", "50", "--step-interval-ms", "200",
                 "--warmup-secs", "0", "--duration-secs", "30",
                 "--connections-per-core", str(1 + n // STREAMS_PER_CONNECTION)]
        started = round(time.monotonic() - t0, 1)
        p = subprocess.Popen(loadgen_cmd(args, proto, port, rest_port, extra, rng.randrange(len(CPUS))),
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(0.2 + rng.random() * 1.3)
        p.send_signal(signal.SIGKILL)
        out["runs"].append([started, round(time.monotonic() - t0, 1), proto, n])
        p.wait()
        out["kills"] += 1
        out["by_protocol"][proto] = out["by_protocol"].get(proto, 0) + 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=360, help="seconds of load (default 360)")
    ap.add_argument("--streams", type=int, default=12000, help="paced streams over all protocols (default 12000)")
    ap.add_argument("--interval-ms", type=float, default=4000, help="step interval of each stream (default 4000)")
    ap.add_argument("--length", type=int, default=20, help="mean steps per sequence, varied by half (default 20)")
    ap.add_argument("--cancel-fraction", type=float, default=0.02)
    ap.add_argument("--disconnect-fraction", type=float, default=0.02)
    ap.add_argument("--vandal-every", type=float, default=3.0, help="mean seconds between vandals (0: none)")
    ap.add_argument("--vandal-sequences", type=int, default=300)
    ap.add_argument("--sequence-timeout", type=int, default=5, help="the model's sequence_timeout_seconds")
    ap.add_argument("--max-sequences", type=int, default=100000, help="the model's max_sequence_number")
    ap.add_argument("--warmup", type=float, default=0.3, help="fraction of the run before RSS must be flat")
    ap.add_argument("--rss-growth-max", type=float, default=0.10,
                    help="allowed RSS growth after the warm-up, as a fraction (default 0.10)")
    ap.add_argument("--min-requests", type=int, default=0, help="fail unless this many answers were verified")
    ap.add_argument("--min-sequences", type=int, default=0, help="fail unless this many sequences were started")
    ap.add_argument("--bin", default=os.environ.get("SEQCORE_BIN", str(ROOT / "target/release/seqcore")))
    ap.add_argument("--loadgen", default=os.environ.get("LOADGEN_BIN", str(ROOT / "target/release/loadgen")))
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    work = Path(tempfile.mkdtemp(prefix="seqcore-soak-"))
    server, port, rest_port, log = start_server(args, work)
    report: dict = {"seed": seed, "args": vars(args), "work_dir": str(work)}
    clients = []
    try:
        for k, (proto, share) in enumerate(SHARES.items()):
            n = max(1, round(args.streams * share))
            out = work / f"{proto}.json"
            extra = ["--sequences", str(n), "--step-interval-ms", str(args.interval_ms),
                     "--step-jitter-ms", str(min(args.interval_ms, 5.0)), "--sequence-length", str(args.length),
                     "--length-variation", "0.5", "--warmup-secs", "0", "--duration-secs", str(args.duration),
                     "--verify", "--cancel-fraction", str(args.cancel_fraction),
                     "--disconnect-fraction", str(args.disconnect_fraction),
                     "--connections-per-core", str(1 + n // STREAMS_PER_CONNECTION if proto == "kserve-stream" else 2),
                     "--timeout-ms", "10000", "--seed", str(rng.randrange(1 << 30)), "--json", str(out)]
            clients.append((proto, out, subprocess.Popen(loadgen_cmd(args, proto, port, rest_port, extra, k),
                                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                          text=True)))
        vandals = {"kills": 0, "by_protocol": {}, "runs": []}
        stop = threading.Event()
        vt = None
        t0 = time.monotonic()
        if args.vandal_every > 0:
            vt = threading.Thread(target=vandal_loop, args=(args, port, rest_port, stop, vandals, rng, t0),
                                  daemon=True)
            vt.start()
        samples = []
        while any(p.poll() is None for _, _, p in clients):
            t = time.monotonic()
            try:
                live, stalls = scrape(rest_port)
            except OSError as e:  # a scrape that times out under load is a sample, not the end
                live = stalls = None
                report.setdefault("scrape_failures", []).append(f"{round(t - t0, 1)} s: {e}")
            samples.append({"t": round(t - t0, 1), "rss_kib": rss_kib(server.pid), "live": live,
                            "stalls": stalls, "scrape_ms": round((time.monotonic() - t) * 1000, 1)})
            time.sleep(1.0)
            if time.monotonic() - t0 > args.duration + 120:
                break
        stop.set()
        if vt:
            vt.join(timeout=5)
        load_end = time.monotonic()
        outputs = {}
        for proto, out, p in clients:
            try:
                outputs[proto] = p.communicate(timeout=30)[0]
            except subprocess.TimeoutExpired:
                p.kill()
                outputs[proto] = p.communicate()[0]
        # The live count returns to 0 once the abandoned sequences time out (the idle timeout,
        # checked every 200 ms by each shard).
        drain_deadline = load_end + args.sequence_timeout + 5
        live = live_sequences(rest_port)
        while live > 0 and time.monotonic() < drain_deadline:
            time.sleep(0.2)
            live = live_sequences(rest_port)
        report["live_after_timeout"] = live
        report["seconds_to_no_live"] = round(time.monotonic() - load_end, 1) if live == 0 else None
        report["rss_after_drain_kib"] = rss_kib(server.pid)
        report["samples"] = samples
        report["vandals"] = vandals
    finally:
        for _, _, p in clients:
            if p.poll() is None:
                p.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()

    failures = []
    per = {}
    for proto, out, p in clients:
        if not out.exists():
            failures.append(f"{proto}: no report (exit {p.returncode}):\n{outputs.get(proto, '')[-2000:]}")
            continue
        r = json.loads(out.read_text())
        per[proto] = {k: r[k] for k in ("requests_total", "sequences_started_total", "sequences_completed_total",
                                        "verify_failures", "verify_samples", "injected")}
        per[proto]["errors"] = r["errors"]
        per[proto]["latency_us"] = {k: r["latency_us"].get(k) for k in ("p50", "p99", "p99.9", "max")}
        if r["verify_failures"]:
            failures.append(f"{proto}: {r['verify_failures']} wrong answers: {r['verify_samples']}")
        if r["errors"]["total"]:
            overloaded = any("overloaded" in s for s in r["errors"]["samples"])
            hint = (" (the server was overloaded: the soak checks correctness, so give it fewer --streams "
                    "or a longer --interval-ms for this machine)") if overloaded else ""
            failures.append(f"{proto}: {r['errors']['total']} errors{hint}: {r['errors']['by_status']} "
                            f"{r['errors']['samples'][:3]}")
    report["clients"] = per
    total = {k: sum(c[k] for c in per.values()) for k in ("requests_total", "sequences_started_total")}
    total["cancelled"] = sum(c["injected"]["cancelled"] for c in per.values())
    total["disconnects"] = sum(c["injected"]["disconnects"] for c in per.values())
    report["total"] = total
    samples = report.get("samples", [])
    # Flat while the load runs: from the end of the warm-up to the end of the load (the clients'
    # final ENDs, all at once, are a burst of their own, reported apart as rss_after_drain_kib).
    warm = [s for s in samples if args.warmup * args.duration <= s["t"] <= args.duration]
    if warm:
        base, peak = warm[0]["rss_kib"], max(s["rss_kib"] for s in warm)
        report["rss_kib"] = {"after_warmup": base, "peak_after_warmup": peak,
                             "growth": round(peak / base - 1, 4) if base else None,
                             "first": samples[0]["rss_kib"]}
        if base and peak > base * (1 + args.rss_growth_max):
            failures.append(f"RSS grew from {base} KiB after the warm-up to {peak} KiB "
                            f"(more than {args.rss_growth_max:.0%})")
    report["peak_live"] = max((s["live"] or 0 for s in samples), default=0)
    report["scrape_ms_max"] = max((s["scrape_ms"] for s in samples), default=0)
    if report.get("live_after_timeout", 1):
        failures.append(f"{report.get('live_after_timeout')} sequences still live "
                        f"{args.sequence_timeout + 5} s after the load stopped")
    if server.returncode not in (0, None):
        failures.append(f"seqcore exited {server.returncode} at the SIGTERM")
    text = log.read_text(errors="replace")
    # The shards' stall warnings (shard/stall.rs), at most one per shard per 10 s: what kept an
    # event loop from running, if anything did.
    report["stall_warnings"] = [line for line in text.splitlines() if "event loop stalled" in line][:50]
    report["stalls"] = max((s["stalls"] or 0 for s in samples), default=0)
    if re.search(r"panicked|RUST_BACKTRACE", text):
        failures.append("the server's log shows a panic:\n" + text[-3000:])
    if total["requests_total"] < args.min_requests:
        failures.append(f"only {total['requests_total']} answers (wanted >= {args.min_requests})")
    if total["sequences_started_total"] < args.min_sequences:
        failures.append(f"only {total['sequences_started_total']} sequences (wanted >= {args.min_sequences})")
    report["failures"] = failures
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    summary = {k: report.get(k) for k in ("total", "peak_live", "rss_kib", "seconds_to_no_live",
                                          "scrape_ms_max", "scrape_failures", "stalls", "stall_warnings")}
    summary["vandals"] = {k: v for k, v in report.get("vandals", {}).items() if k != "runs"}
    summary["latency_us"] = {p: c["latency_us"] for p, c in per.items()}
    print(json.dumps(summary, indent=1))
    for f in failures:
        print("soak: FAILED:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
