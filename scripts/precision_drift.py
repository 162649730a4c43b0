#!/usr/bin/env python3
"""bf16 vs f32 on the demo LSTM over one long sequence: output/state drift per step, step time.

Measures, with OpenVINO on this machine's CPU and seqcore's compile settings (NUM_STREAMS=1,
INFERENCE_NUM_THREADS=1, ENABLE_CPU_PINNING=NO), the `lstm` model of scripts/gen_models.py
compiled three ways: INFERENCE_PRECISION_HINT=f32, INFERENCE_PRECISION_HINT=bf16, and
OpenVINO's default (no hint). For each it reports the precision OpenVINO reads back after
compiling (a bf16 request on a CPU without native bf16 is silently compiled as f32), the largest
|scores| and |state| difference from f32 at every step of one sequence, and the step time.

It also runs a NUMPY EMULATION of bf16 (not OpenVINO's numbers): the same LSTM in numpy, with
weights and every matmul input rounded to bf16 (round to nearest even) and f32 accumulation, as
bf16 dot-product hardware computes, in two variants: state kept in f32 ("emu bf16 matmul"), and
state (h, c) also rounded to bf16 after every step ("emu bf16 matmul+state"). On a CPU with
native bf16, compare the emulation with OpenVINO's real bf16 column to see which it resembles.

Run:  .venv/bin/python scripts/precision_drift.py [--steps 200] [--json out.json]
Results for the machines measured so far are in docs/precision.md.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gen_models  # noqa: E402  (weights come from the generator itself, same seed)

gen_models._load_libs()

# What seqcore's shim compiles every model with (ov_shim/seqcore_ov.cpp).
SERVER_DEFAULTS = {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False}
CONFIGS = {
    "f32": {"INFERENCE_PRECISION_HINT": "f32"},
    "bf16": {"INFERENCE_PRECISION_HINT": "bf16"},
    "default": {},
}
REPORT_STEPS = (1, 2, 3, 5, 10, 20, 50, 100, 150, 200, 500, 1000)


def cpu_info():
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, sorted(f for f in flags if "bf16" in f or "amx" in f or f in ("avx2", "avx512f", "avx512_fp16"))


# ------------------------------------------------------------------ OpenVINO

def compile_openvino(xml, config):
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {**SERVER_DEFAULTS, **config})
    return {
        "precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "execution_mode": compiled.get_property("EXECUTION_MODE_HINT").name,
        "compiled": compiled,
        "request": compiled.create_infer_request(),
        "times_us": [],
    }


def run_pass(run, inputs, record):
    """One sequence from reset state; times every infer(); keeps outputs and states if `record`."""
    req, out_port = run["request"], run["compiled"].output("scores")
    req.reset_state()
    scores, states = [], []
    for x in inputs:
        t0 = time.perf_counter_ns()
        req.infer({"features": x})
        if not record:
            run["times_us"].append((time.perf_counter_ns() - t0) / 1000.0)
        else:
            scores.append(np.array(req.get_tensor(out_port).data, copy=True))
            states.append({s.name: np.array(s.state.data, copy=True) for s in req.query_state()})
    if record:
        run["scores"], run["states"] = scores, states


# ------------------------------------------------------------------ numpy LSTM

def bf16(a):
    """Rounds f32 values to the nearest bf16 (ties to even), returned as f32."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).reshape(a.shape)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def run_numpy(inputs, mode):
    """mode: 'f32', 'matmul' (bf16 weights and matmul inputs) or 'state' (also bf16 h, c)."""
    layers, (wp, bp) = gen_models.lstm_weights()
    r = bf16 if mode != "f32" else (lambda a: a)
    H = gen_models.HIDDEN
    h = [np.zeros((1, H), np.float32) for _ in layers]
    c = [np.zeros((1, H), np.float32) for _ in layers]
    scores, states = [], []
    for x in inputs:
        inp = x
        for i, (w, rr, b) in enumerate(layers):
            g = (r(inp).astype(np.float64) @ r(w).T.astype(np.float64)
                 + r(h[i]).astype(np.float64) @ r(rr).T.astype(np.float64)
                 + b).astype(np.float32)
            f, ig, cc, o = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
            c_new = sigmoid(f) * c[i] + sigmoid(ig) * np.tanh(cc)
            h_new = sigmoid(o) * np.tanh(c_new)
            if mode == "state":
                c_new, h_new = bf16(c_new), bf16(h_new)
            h[i], c[i] = h_new.astype(np.float32), c_new.astype(np.float32)
            inp = h[i]
        scores.append((r(inp).astype(np.float64) @ r(wp).astype(np.float64) + bp).astype(np.float32))
        states.append({f"lstm{i}_{k}": v for i in range(len(layers)) for k, v in (("h", h[i]), ("c", c[i]))})
    return scores, states


# ------------------------------------------------------------------ report

def per_step(a, b):
    return [float(np.max(np.abs(x - y))) for x, y in zip(a, b)]


def state_diff(a, b):
    return [max(float(np.max(np.abs(x[k] - y[k]))) for k in x) for x, y in zip(a, b)]


def windows(diffs):
    n = len(diffs)
    edges = [e for e in (0, 10, 50, 100, 200, 500, 1000) if e < n] + [n]
    return {f"{lo + 1}-{hi}": max(diffs[lo:hi]) for lo, hi in zip(edges, edges[1:])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=20260101)
    p.add_argument("--passes", type=int, default=5, help="timed passes over the sequence per config")
    p.add_argument("--model", default=str(ROOT / "models" / "generated" / "lstm" / "1" / "model.xml"))
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    inputs = [rng.standard_normal((1, gen_models.FEATURES)).astype(np.float32) for _ in range(args.steps)]
    model, flags = cpu_info()
    print(f"CPU: {model}; relevant flags: {' '.join(flags) or '-'}")
    print(f"OpenVINO {ov.get_version()}; {args.steps} steps, seed {args.seed}, {args.passes} timed passes")

    runs = {name: compile_openvino(args.model, cfg) for name, cfg in CONFIGS.items()}
    for r in runs.values():
        run_pass(r, inputs, record=True)  # also the warm-up
    # Timed passes alternate between configurations, so a noisy neighbour hits all of them alike.
    for _ in range(args.passes):
        for r in runs.values():
            run_pass(r, inputs, record=False)
    for name, r in runs.items():
        t = sorted(r["times_us"])
        r["median_us"], r["p90_us"] = statistics.median(t), t[int(0.9 * (len(t) - 1))]
        print(f"  {name:8s} requested {CONFIGS[name] or '(nothing)'} -> effective "
              f"{r['precision']}, {r['execution_mode']}; step time median {r['median_us']:.1f} us, "
              f"p90 {r['p90_us']:.1f} us")
    base = runs["f32"]

    np_f32, np_f32_states = run_numpy(inputs, "f32")
    emu = {m: run_numpy(inputs, m) for m in ("matmul", "state")}
    cols = {
        "ov bf16": (per_step(runs["bf16"]["scores"], base["scores"]),
                    state_diff(runs["bf16"]["states"], base["states"])),
        "ov default": (per_step(runs["default"]["scores"], base["scores"]),
                       state_diff(runs["default"]["states"], base["states"])),
        "numpy f32 vs ov f32": (per_step(np_f32, base["scores"]), state_diff(np_f32_states, base["states"])),
        "emu bf16 matmul": (per_step(emu["matmul"][0], np_f32), state_diff(emu["matmul"][1], np_f32_states)),
        "emu bf16 matmul+state": (per_step(emu["state"][0], np_f32), state_diff(emu["state"][1], np_f32_states)),
    }
    # What a state bug would look like: the stateful output vs a fresh start on the same input.
    fresh = [run_numpy([x], "f32")[0][0] for x in inputs]
    signal = per_step(np_f32, fresh)
    scale = max(float(np.max(np.abs(s))) for s in np_f32)

    print(f"\nmax |scores| over the sequence: {scale:.3f}; state effect (stateful vs fresh start, "
          f"max |diff| per step): median {statistics.median(signal[1:]):.3g}, min {min(signal[1:]):.3g}")
    print("\nlargest |scores diff| from f32 at step k (state diff in brackets); 'emu' = numpy emulation:")
    print("step  " + "".join(f"{c:>28s}" for c in cols))
    for k in [s for s in REPORT_STEPS if s <= args.steps]:
        print(f"{k:<6d}" + "".join(f"{d[k - 1]:>14.3g} [{sd[k - 1]:9.3g}]  " for d, sd in cols.values()))
    print("max   " + "".join(f"{max(d):>14.3g} [{max(sd):9.3g}]  " for d, sd in cols.values()))
    print("\nmax |scores diff| per window of steps:")
    for c, (d, _) in cols.items():
        print(f"  {c:22s} " + "  ".join(f"{w}: {v:.3g}" for w, v in windows(d).items()))

    if args.json:
        out = {
            "cpu": model, "flags": flags, "openvino": ov.get_version(), "steps": args.steps, "seed": args.seed,
            "openvino_runs": {n: {k: r[k] for k in ("precision", "execution_mode", "median_us", "p90_us")}
                              for n, r in runs.items()},
            "per_step_scores_diff": {c: d for c, (d, _) in cols.items()},
            "per_step_state_diff": {c: sd for c, (_, sd) in cols.items()},
            "state_effect": signal, "max_abs_scores": scale,
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
