#!/usr/bin/env python3
"""Generates seqcore's demo/test models as OpenVINO IR, deterministically.

Layout (OVMS model repository): <out>/generated/<name>/1/model.xml|.bin

  summator  stateful running sum (like OVMS's test model):
            input `input` f32[1,1] -> output `add_sum` f32[1,1]; variable `state` f32[1,1].
  lstm      2 stacked LSTMCells x 256 hidden, h/c of each layer in variables
            `lstm0_h`, `lstm0_c`, `lstm1_h`, `lstm1_c` (f32[1,256], zero-initialised);
            input `features` f32[1,40] -> linear projection -> output `scores` f32[1,32].
  lstm_ti   the same network and weights as a TensorIterator (sequence length 1, back-edges
            for h and c), i.e. the pre-stateful form. Stateless as is; after
            ov::pass::LowLatency2 (use_const_initializer=true) it computes exactly what `lstm`
            does, step by step (checked here after building).
  lstm_chunk4, lstm_chunk16
            `lstm` over a chunk of 4 or 16 frames per request (40 and 160 ms of 10 ms frames):
            input `features` f32[1,T,40] -> output `scores` f32[1,T,32], the same weights (held
            once) and variables; the T steps unrolled. Equal to T steps of `lstm` (checked here).
  dummy     stateless: input `b` f32[1,10] -> output `a` = b + 1.

Weights come from numpy's default_rng with fixed seeds, so two runs produce identical bytes.
The outputs are rebuilt only when missing or when the stamp file
(<out>/generated/.stamp) records a different generator version (hash of this script plus the
OpenVINO version); otherwise the script exits immediately.
"""

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# numpy and openvino are imported by _load_libs() only when something must be built, so the
# up-to-date check stays well under a second (importing openvino alone takes ~0.6 s).
np = ov = ops = Variable = VariableInfo = None


def _load_libs():
    global np, ov, ops, Variable, VariableInfo
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.op.util import Variable, VariableInfo

MODELS = ("summator", "lstm", "lstm_ti", "lstm_chunk4", "lstm_chunk16", "dummy")
CHUNKS = {"lstm_chunk4": 4, "lstm_chunk16": 16}
STAMP = ".stamp"

FEATURES = 40
HIDDEN = 256
LAYERS = 2
SCORES = 32
WEIGHT_SEED = 20240611
WEIGHT_SCALE = 0.1


# ---------------------------------------------------------------- helpers

def _name(output, name):
    """Gives a node output an exact tensor name (what get_any_name() reports) and friendly name."""
    output.get_tensor().set_names({name})
    output.get_node().set_friendly_name(name)
    return output


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def _variable(var_id, shape):
    info = VariableInfo()
    info.variable_id = var_id
    info.data_type = ov.Type.f32
    info.data_shape = ov.PartialShape(shape)
    return Variable(info)


def _read_state(var_id, shape):
    """ReadValue of a new f32 variable with a zero Constant initializer; returns (node, variable)."""
    var = _variable(var_id, shape)
    init = ops.constant(np.zeros(shape, dtype=np.float32), name=f"{var_id}/init")
    read = ov.op.read_value(init, var)
    read.set_friendly_name(f"{var_id}/read")
    return read, var


def _assign(value, var):
    # The binding takes a Node (its output 0); rewire to the exact output (LSTMCell's c is output 1).
    node = ov.op.assign(value.get_node(), var)
    node.input(0).replace_source_output(value)
    node.set_friendly_name(f"{var.get_info().variable_id}/assign")
    return node


def _result(output, name):
    res = ops.result(output)
    res.set_friendly_name(f"{name}/sink_port_0")
    return res


def lstm_weights():
    """The LSTM network's weights (shared by `lstm` and `lstm_ti`), from a fixed seed.

    Per layer: W [4H, in], R [4H, H], B [4H] in OpenVINO's LSTMCell gate order (f, i, c, o);
    then the projection Wp [H, SCORES], bp [SCORES].
    """
    rng = np.random.default_rng(WEIGHT_SEED)
    layers = []
    for layer in range(LAYERS):
        n_in = FEATURES if layer == 0 else HIDDEN
        w = _f32(rng.standard_normal((4 * HIDDEN, n_in)) * WEIGHT_SCALE)
        r = _f32(rng.standard_normal((4 * HIDDEN, HIDDEN)) * WEIGHT_SCALE)
        b = _f32(rng.standard_normal(4 * HIDDEN) * WEIGHT_SCALE)
        layers.append((w, r, b))
    wp = _f32(rng.standard_normal((HIDDEN, SCORES)) * WEIGHT_SCALE)
    bp = _f32(rng.standard_normal(SCORES) * WEIGHT_SCALE)
    return layers, (wp, bp)


def _lstm_body(x, states, weights, prefix=""):
    """Two stacked LSTMCells + projection. states: [(h, c)] per layer (node outputs).

    Returns (scores output, [(h_new, c_new)] per layer).
    """
    layers, (wp, bp) = weights
    new_states = []
    inp = x
    for i, ((w, r, b), (h, c)) in enumerate(zip(layers, states)):
        cell = ops.lstm_cell(inp, h, c,
                             ops.constant(w, name=f"{prefix}lstm{i}/W"),
                             ops.constant(r, name=f"{prefix}lstm{i}/R"),
                             ops.constant(b, name=f"{prefix}lstm{i}/B"),
                             HIDDEN, name=f"{prefix}lstm{i}/cell")
        new_states.append((cell.output(0), cell.output(1)))
        inp = cell.output(0)
    proj = ops.matmul(inp, ops.constant(wp, name=f"{prefix}proj/W"), False, False,
                      name=f"{prefix}proj/matmul")
    scores = ops.add(proj, ops.constant(bp, name=f"{prefix}proj/B"), name=f"{prefix}proj/add")
    return scores.output(0), new_states


def _lstm_states(batch=1):
    """The LSTM's variables, read: [(h, c)] outputs per layer, and [(h var, c var)]."""
    states, variables = [], []
    for i in range(LAYERS):
        h, vh = _read_state(f"lstm{i}_h", [batch, HIDDEN])
        c, vc = _read_state(f"lstm{i}_c", [batch, HIDDEN])
        states.append((h.output(0), c.output(0)))
        variables.append((vh, vc))
    return states, variables


def _lstm_sinks(new_states, variables):
    """The Assigns that write each layer's new (h, c) back into its variables."""
    sinks = []
    for (h, c), (vh, vc) in zip(new_states, variables):
        sinks += [_assign(h, vh), _assign(c, vc)]
    return sinks


# ---------------------------------------------------------------- models

def build_summator():
    x = ops.parameter([1, 1], np.float32, name="input")
    _name(x.output(0), "input")
    read, var = _read_state("state", [1, 1])
    out = ops.add(read, x)
    _name(out.output(0), "add_sum")
    save = _assign(out.output(0), var)
    return ov.Model([_result(out.output(0), "add_sum")], [save], [x], "summator")


def build_lstm(weights):
    x = ops.parameter([1, FEATURES], np.float32, name="features")
    _name(x.output(0), "features")
    states, variables = _lstm_states()
    scores, new_states = _lstm_body(x.output(0), states, weights)
    _name(scores, "scores")
    return ov.Model([_result(scores, "scores")], _lstm_sinks(new_states, variables), [x], "lstm")


def build_lstm_chunk(weights, frames):
    """`lstm` over `frames` frames per request: the steps unrolled, the weights shared."""
    layers, (wp, bp) = weights
    x = ops.parameter([1, frames, FEATURES], np.float32, name="features")
    _name(x.output(0), "features")
    w = [tuple(ops.constant(a, name=f"lstm{i}/{k}") for a, k in zip(layer, "WRB")) for i, layer in enumerate(layers)]
    wp_c, bp_c = ops.constant(wp, name="proj/W"), ops.constant(bp, name="proj/B")
    states, variables = _lstm_states()
    axis = ops.constant(np.array([1], dtype=np.int64))
    frames_in = ops.split(x, ops.constant(np.int64(1)), frames, name="features/split")
    outs = []
    for t in range(frames):
        inp = ops.squeeze(frames_in.output(t), axis, name=f"t{t}/features").output(0)
        new_states = []
        for i, ((wc, rc, bc), (h, c)) in enumerate(zip(w, states)):
            cell = ops.lstm_cell(inp, h, c, wc, rc, bc, HIDDEN, name=f"t{t}/lstm{i}/cell")
            new_states.append((cell.output(0), cell.output(1)))
            inp = cell.output(0)
        states = new_states
        proj = ops.matmul(inp, wp_c, False, False, name=f"t{t}/proj/matmul")
        scores = ops.add(proj, bp_c, name=f"t{t}/proj/add")
        outs.append(ops.unsqueeze(scores, axis, name=f"t{t}/scores").output(0))
    scores = ops.concat(outs, 1, name="scores/concat").output(0)
    _name(scores, "scores")
    return ov.Model([_result(scores, "scores")], _lstm_sinks(states, variables), [x], f"lstm_chunk{frames}")


def verify_lstm_chunk(lstm_xml, chunk_xml, frames, chunks=5, seed=11):
    """Checks that `chunks` requests of the chunk model == chunks x frames steps of lstm."""
    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    rng = np.random.default_rng(seed)
    feats = _f32(rng.standard_normal((chunks * frames, FEATURES)))
    ref = run_steps(core.compile_model(core.read_model(lstm_xml), "CPU", f32),
                    [{"features": feats[i:i + 1]} for i in range(chunks * frames)])
    got = run_steps(core.compile_model(core.read_model(chunk_xml), "CPU", f32),
                    [{"features": feats[k * frames:(k + 1) * frames][None]} for k in range(chunks)])
    ref = np.concatenate(ref, axis=0)
    got = np.concatenate([g[0] for g in got], axis=0)
    diff = float(np.max(np.abs(ref - got)))
    if diff > 1e-5:
        raise SystemExit(f"gen_models: lstm_chunk{frames} differs from lstm by {diff}")
    return diff


def build_lstm_ti(weights):
    """`lstm` as a TensorIterator over a length-1 sequence axis, h/c carried by back-edges."""
    x = ops.parameter([1, FEATURES], np.float32, name="features")
    _name(x.output(0), "features")
    seq = ops.unsqueeze(x, ops.constant(np.array([1], dtype=np.int64)), name="features/seq")

    # Body: one time step.
    bx = ops.parameter([1, 1, FEATURES], np.float32, name="body/x")
    body_states, body_params = [], []
    for i in range(LAYERS):
        bh = ops.parameter([1, HIDDEN], np.float32, name=f"lstm{i}_h")
        bc = ops.parameter([1, HIDDEN], np.float32, name=f"lstm{i}_c")
        body_params.append((bh, bc))
        body_states.append((bh.output(0), bc.output(0)))
    x_t = ops.squeeze(bx, ops.constant(np.array([1], dtype=np.int64)), name="body/x_t")
    scores_t, new_states = _lstm_body(x_t.output(0), body_states, weights, prefix="body/")
    scores_seq = ops.unsqueeze(scores_t, ops.constant(np.array([1], dtype=np.int64)),
                               name="body/scores_seq")
    body_results = [ops.result(scores_seq)]
    state_results = []
    for h, c in new_states:
        rh, rc = ops.result(h), ops.result(c)
        state_results.append((rh, rc))
        body_results += [rh, rc]
    body = ov.Model(body_results, [bx] + [p for pair in body_params for p in pair], "lstm_ti_body")

    ti = ops.tensor_iterator()
    ti.set_friendly_name("lstm_ti")
    ti.set_body(body)
    ti.set_sliced_input(bx, seq.output(0), 0, 1, 1, -1, 1)
    for i, ((bh, bc), (rh, rc)) in enumerate(zip(body_params, state_results)):
        zeros = np.zeros([1, HIDDEN], dtype=np.float32)
        ti.set_merged_input(bh, ops.constant(zeros, name=f"lstm{i}_h/init").output(0), rh.output(0))
        ti.set_merged_input(bc, ops.constant(zeros, name=f"lstm{i}_c/init").output(0), rc.output(0))
    out_seq = ti.get_concatenated_slices(body_results[0].output(0), 0, 1, 1, -1, 1)
    ti.validate_and_infer_types()
    scores = ops.squeeze(out_seq, ops.constant(np.array([1], dtype=np.int64)))
    _name(scores.output(0), "scores")
    return ov.Model([_result(scores.output(0), "scores")], [x], "lstm_ti")


def build_dummy():
    b = ops.parameter([1, 10], np.float32, name="b")
    _name(b.output(0), "b")
    a = ops.add(b, ops.constant(np.ones([1, 10], dtype=np.float32)))
    _name(a.output(0), "a")
    return ov.Model([_result(a.output(0), "a")], [b], "dummy")


# ---------------------------------------------------------------- verification

def run_steps(compiled, inputs):
    """Runs the steps of one sequence in one fresh infer request; returns the first output per step."""
    req = compiled.create_infer_request()
    req.reset_state()
    return [np.array(req.infer(step)[compiled.output(0)]) for step in inputs]


def verify_lstm_ti(lstm_xml, lstm_ti_xml, steps=20, seed=7):
    """Checks that lstm_ti + LowLatency2 == lstm over `steps` steps. Returns (max abs diff, states)."""
    from openvino._offline_transformations import apply_low_latency_transformation

    core = ov.Core()
    ti_model = core.read_model(lstm_ti_xml)
    apply_low_latency_transformation(ti_model, use_const_initializer=True)
    states = sorted(v.get_info().variable_id for v in ti_model.get_variables())
    if len(states) != 2 * LAYERS:
        raise SystemExit(f"gen_models: lstm_ti has {len(states)} states after LowLatency2: {states}")
    rng = np.random.default_rng(seed)
    inputs = [{"features": _f32(rng.standard_normal((1, FEATURES)))} for _ in range(steps)]
    # Pinned to f32: the 1e-5 bound is f32's; unpinned, OpenVINO runs bf16 on CPUs with native
    # bf16, where the two graphs differ by ~1e-3 and `make setup` would fail (docs/precision.md).
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    ref = run_steps(core.compile_model(core.read_model(lstm_xml), "CPU", f32), inputs)
    got = run_steps(core.compile_model(ti_model, "CPU", f32), inputs)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got))
    if diff > 1e-5:
        raise SystemExit(f"gen_models: lstm_ti (LowLatency2) differs from lstm by {diff}")
    return diff, states


# ---------------------------------------------------------------- main

def generator_version():
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(importlib.metadata.version("openvino").encode())
    return h.hexdigest()


def up_to_date(gen_dir, version):
    stamp = gen_dir / STAMP
    if not stamp.is_file() or stamp.read_text().strip() != version:
        return False
    return all((gen_dir / m / "1" / f"model.{ext}").is_file() for m in MODELS for ext in ("xml", "bin"))


def save(model, gen_dir, name):
    """Writes <gen_dir>/<name>/1/model.xml|.bin atomically (temp dir, then rename)."""
    final = gen_dir / name / "1"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".1.", dir=final.parent))
    tmp.chmod(0o755)
    ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final / "model.xml"


def generate(out, force=False, verify=True):
    gen_dir = Path(out) / "generated"
    version = generator_version()
    if not force and up_to_date(gen_dir, version):
        print(f"gen_models: {gen_dir} up to date")
        return
    _load_libs()
    gen_dir.mkdir(parents=True, exist_ok=True)
    (gen_dir / STAMP).unlink(missing_ok=True)
    t_all = time.monotonic()
    weights = lstm_weights()
    builders = {
        "summator": build_summator,
        "lstm": lambda: build_lstm(weights),
        "lstm_ti": lambda: build_lstm_ti(weights),
        "lstm_chunk4": lambda: build_lstm_chunk(weights, 4),
        "lstm_chunk16": lambda: build_lstm_chunk(weights, 16),
        "dummy": build_dummy,
    }
    paths = {}
    for name in MODELS:
        t = time.monotonic()
        paths[name] = save(builders[name](), gen_dir, name)
        print(f"gen_models: built {name} -> {paths[name]} ({time.monotonic() - t:.2f}s)", flush=True)
    if verify:
        diff, states = verify_lstm_ti(paths["lstm"], paths["lstm_ti"])
        print(f"gen_models: lstm_ti + LowLatency2 == lstm over 20 steps "
              f"(max abs diff {diff:.3g}; states {', '.join(states)})")
        for name, frames in CHUNKS.items():
            diff = verify_lstm_chunk(paths["lstm"], paths[name], frames)
            print(f"gen_models: {name} == {frames} steps of lstm per request (max abs diff {diff:.3g})")
    (gen_dir / STAMP).write_text(version + "\n")
    print(f"gen_models: done in {time.monotonic() - t_all:.2f}s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="models", help="models directory (default: models)")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("--no-verify", action="store_true", help="skip the lstm_ti/LowLatency2 check")
    args = p.parse_args(argv)
    generate(args.out, force=args.force, verify=not args.no_verify)


if __name__ == "__main__":
    sys.exit(main())
