#!/usr/bin/env python3
"""What a step of the demo LSTM costs when B sequences are stepped as one batch (issue 9, part 4).

Builds the `lstm` network (the same weights as models/generated/lstm) at batch 1, 2, 4, 8 into a
temporary directory: input f32[B,40], variables f32[B,256] (one row per sequence, Triton's
"direct" batching slot), output f32[B,32]. Then times each in-process through the loadgen's raw
mode, state resident (one infer request per sequence, no copies), on one pinned CPU, the batch
sizes alternated over `--rounds`, and prints per inference and per sequence-step medians. First it
checks exactness: each row of every batch, over 30 steps, against the same sequence run alone.

Run with the project venv's python from the repo root after `make build`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_models as g  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = Path(os.environ.get("LOADGEN_BIN", ROOT / "target" / "release" / "loadgen"))


def build(batch, weights):
    x = g.ops.parameter([batch, g.FEATURES], g.np.float32, name="features")
    g._name(x.output(0), "features")
    states, variables = g._lstm_states(batch)
    scores, new_states = g._lstm_body(x.output(0), states, weights)
    g._name(scores, "scores")
    return g.ov.Model([g._result(scores, "scores")], g._lstm_sinks(new_states, variables), [x], f"lstm_b{batch}")


def time_model(xml, cpu, precision, secs):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [str(LOADGEN), "--raw", "--raw-resident", "--model-xml", str(xml), "--sequences", "16",
               "--sequence-length", "100000", "--cpuset", cpu, "--quiet", "--warmup-secs", "1",
               "--duration-secs", str(secs), "--json", out.name]
        if precision != "default":
            cmd += ["--raw-precision", precision]
        subprocess.run(cmd, check=True, capture_output=True)
        return 1e6 / json.loads(Path(out.name).read_text())["requests_per_sec"]


def compile_config(precision):
    cfg = {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 1}
    if precision != "default":
        cfg["INFERENCE_PRECISION_HINT"] = precision
    return cfg


def effective_precision(weights, precision):
    """What OpenVINO compiled for `precision` here (a bf16 hint on a CPU without bf16 is f32)."""
    m = g.ov.Core().compile_model(build(1, weights), "CPU", compile_config(precision))
    return m.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def exactness(batch, weights, precision, steps=30):
    """Largest |row of a batch - the same sequence alone| over `steps` steps."""
    core = g.ov.Core()
    cfg = compile_config(precision)
    alone = core.compile_model(build(1, weights), "CPU", cfg)
    batched = core.compile_model(build(batch, weights), "CPU", cfg)
    feats = g.np.random.default_rng(batch).standard_normal((steps, batch, g.FEATURES)).astype(g.np.float32)
    rb = batched.create_infer_request()
    out_b = [g.np.array(rb.infer({0: feats[t]})[0]) for t in range(steps)]
    worst = 0.0
    for row in range(batch):
        r1 = alone.create_infer_request()
        for t in range(steps):
            got = g.np.array(r1.infer({0: feats[t, row:row + 1]})[0])
            worst = max(worst, float(g.np.max(g.np.abs(got[0] - out_b[t][row]))))
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--secs", type=float, default=3.0)
    p.add_argument("--cpu", default="0")
    p.add_argument("--precision", default="f32", help="f32, bf16 or default")
    a = p.parse_args()
    g._load_libs()
    weights = g.lstm_weights()
    batches = [int(b) for b in a.batches.split(",")]
    print(f"precision asked {a.precision}, ran {effective_precision(weights, a.precision)}")
    for b in batches:
        if b > 1:
            print(f"batch {b}: largest |row - the sequence alone| over 30 steps: {exactness(b, weights, a.precision):.3g}")
    with tempfile.TemporaryDirectory() as d:
        xmls = {}
        for b in batches:
            xmls[b] = Path(d) / f"lstm_b{b}.xml"
            g.ov.save_model(build(b, weights), str(xmls[b]), compress_to_fp16=False)
        times = {b: [] for b in batches}
        for _ in range(a.rounds):
            for b in batches:
                times[b].append(time_model(xmls[b], a.cpu, a.precision, a.secs))
    base = sorted(times[batches[0]])[len(times[batches[0]]) // 2]
    print(f"batch | µs per inference (median of {a.rounds}; range) | µs per sequence-step | per step ÷ batch {batches[0]}")
    for b in batches:
        t = sorted(times[b])
        med = t[len(t) // 2]
        print(f"{b} | {med:.1f} ({t[0]:.1f} … {t[-1]:.1f}) | {med / b:.1f} | {med / b / (base / batches[0]):.2f}")


if __name__ == "__main__":
    main()
