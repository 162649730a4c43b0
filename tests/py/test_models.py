"""Checks the generated models (scripts/gen_models.py) in-process with OpenVINO, and the
precision policy: what OpenVINO picks on this CPU, that the server reports it, and that the
server computes what in-process OpenVINO computes in each precision the CPU can run.

Run: .venv/bin/python -m pytest tests/py/test_models.py
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import END, START, make_request, model_dir, output_array, predict_ok, run_binary, write_config  # noqa: E402
from reference import (ATOL, BF16, F32, PRECISIONS, Reference, cpu_has_native_bf16, model_xml,  # noqa: E402
                       precision_params, repo_root)

GEN = repo_root() / "scripts" / "gen_models.py"
OVMS_SUMMATOR = repo_root().parent / "shared" / "models" / "ovms-summator" / "1" / "summator.xml"
MODELS = ("summator", "lstm", "lstm_ti", "lstm_chunk4", "lstm_chunk16", "dummy")
LSTM_STATES = ["lstm0_c", "lstm0_h", "lstm1_c", "lstm1_h"]


def _generate(out: Path) -> None:
    subprocess.run([sys.executable, str(GEN), "--out", str(out)], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session", autouse=True)
def generated_models():
    """Brings models/generated up to date (a no-op when it already is, as in setup.sh)."""
    _generate(repo_root() / "models")


def _feature_steps(n=20, seed=123):
    rng = np.random.default_rng(seed)
    return [{"features": rng.standard_normal((1, 40)).astype(np.float32)} for _ in range(n)]


def _io(xml):
    m = ov.Core().read_model(str(xml))
    return ([(p.get_any_name(), p.get_shape()) for p in m.inputs],
            [(r.get_any_name(), r.get_shape()) for r in m.outputs],
            sorted(v.get_info().variable_id for v in m.get_variables()))


def test_io_names_and_shapes():
    assert _io(model_xml("summator")) == ([("input", [1, 1])], [("add_sum", [1, 1])], ["state"])
    assert _io(model_xml("lstm")) == ([("features", [1, 40])], [("scores", [1, 32])], LSTM_STATES)
    assert _io(model_xml("lstm_ti")) == ([("features", [1, 40])], [("scores", [1, 32])], [])
    assert _io(model_xml("dummy")) == ([("b", [1, 10])], [("a", [1, 10])], [])


def _summator_outputs(xml):
    ref = Reference(xml)
    assert ref.state_names == ["state"]
    steps = [{"input": np.array([[v]], dtype=np.float32)} for v in (1.0, 2.0, 3.5)]
    return [float(o["add_sum"][0, 0]) for o in ref.run_sequence(steps)]


def test_summator_running_sum():
    assert _summator_outputs(model_xml("summator")) == [1.0, 3.0, 6.5]


def test_summator_reset_between_sequences():
    ref = Reference(model_xml("summator"))
    steps = [{"input": np.array([[2.0]], dtype=np.float32)}] * 2
    assert [o["add_sum"][0, 0] for o in ref.run_sequence(steps)] == [2.0, 4.0]
    assert [o["add_sum"][0, 0] for o in ref.run_sequence(steps)] == [2.0, 4.0]


def test_ovms_summator_matches_ours():
    from conftest import require_ovms_summator

    require_ovms_summator()
    assert _io(OVMS_SUMMATOR) == _io(model_xml("summator"))
    assert _summator_outputs(OVMS_SUMMATOR) == _summator_outputs(model_xml("summator")) == [1.0, 3.0, 6.5]
    rng = np.random.default_rng(5)
    steps = [{"input": rng.standard_normal((1, 1)).astype(np.float32)} for _ in range(10)]
    theirs = Reference(OVMS_SUMMATOR).run_sequence(steps)
    ours = Reference(model_xml("summator")).run_sequence(steps)
    for a, b in zip(theirs, ours):
        np.testing.assert_array_equal(a["add_sum"], b["add_sum"])


def test_lstm_has_four_states_and_depends_on_them():
    ref = Reference(model_xml("lstm"), config=F32)
    assert ref.state_names == LSTM_STATES
    x = _feature_steps(3)
    same_input = [x[0]] * 3
    outs = [o["scores"] for o in ref.run_sequence(same_input)]
    assert outs[0].shape == (1, 32) and outs[0].dtype == np.float32
    assert np.all(np.isfinite(outs[0]))
    # Same input, different state -> different scores.
    assert np.max(np.abs(outs[1] - outs[0])) > 1e-3
    # A new sequence starts from zeros again.
    again = ref.run_sequence(same_input)
    for a, b in zip(outs, again):
        np.testing.assert_array_equal(a, b["scores"])


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_generator_is_deterministic(tmp_path):
    _generate(tmp_path)
    for name in MODELS:
        fresh = tmp_path / "generated" / name / "1"
        for f in ("model.bin", "model.xml"):
            assert _sha256(fresh / f) == _sha256(model_xml(name).with_name(f)), f"{name}/{f}"


def test_generator_skips_when_up_to_date():
    out = subprocess.run([sys.executable, str(GEN), "--out", str(repo_root() / "models")],
                         check=True, capture_output=True, text=True).stdout
    assert "up to date" in out and "built" not in out


@pytest.mark.parametrize("name,frames", [("lstm_chunk4", 4), ("lstm_chunk16", 16)])
def test_lstm_chunk_equals_that_many_lstm_steps(name, frames):
    """The chunk models (a 40 or 160 ms chunk of 10 ms frames per request) carry the state across
    requests exactly as `lstm` does across frames."""
    ref = Reference(model_xml("lstm"), config=F32)
    chunk = Reference(model_xml(name), config=F32)
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((3 * frames, 40)).astype(np.float32)
    want = np.concatenate([o["scores"] for o in ref.run_sequence([{"features": feats[i:i + 1]}
                                                                  for i in range(3 * frames)])])
    got = np.concatenate([o["scores"][0] for o in chunk.run_sequence([{"features": feats[k * frames:(k + 1) * frames][None]}
                                                                      for k in range(3)])])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", precision_params())
def test_lstm_ti_low_latency_equals_lstm(precision):
    steps = _feature_steps(20)
    ti = Reference(model_xml("lstm_ti"), low_latency=True, config=PRECISIONS[precision])
    assert ti.precision == precision
    assert len(ti.state_names) == 4
    expected = Reference(model_xml("lstm"), config=PRECISIONS[precision]).run_sequence(steps)
    got = ti.run_sequence(steps)
    diff = max(float(np.max(np.abs(a["scores"] - b["scores"]))) for a, b in zip(expected, got))
    assert diff <= ATOL[precision]
    # And twice in a row on the same request (state reset between sequences).
    got2 = ti.run_sequence(steps)
    for a, b in zip(got, got2):
        np.testing.assert_array_equal(a["scores"], b["scores"])


@pytest.mark.parametrize("precision", precision_params())
def test_lstm_ti_without_low_latency_is_stateless(precision):
    # On an AMX Xeon, unpinned, this compared two bf16 graphs against f32's 1e-5 (8.3e-4 off).
    steps = _feature_steps(5)
    ti = Reference(model_xml("lstm_ti"), config=PRECISIONS[precision])
    assert ti.precision == precision
    assert ti.state_names == []
    lstm = Reference(model_xml("lstm"), config=PRECISIONS[precision])
    got = ti.run_sequence(steps)
    # Every step of the plain TI model equals lstm's *first* step on that input.
    for step, out in zip(steps, got):
        first = lstm.run_sequence([step])[0]
        np.testing.assert_allclose(out["scores"], first["scores"], rtol=0, atol=ATOL[precision])
    # ... which is not what the stateful lstm gives from step 2 on.
    full = lstm.run_sequence(steps)
    assert np.max(np.abs(full[1]["scores"] - got[1]["scores"])) > 1e-3


def test_dummy_adds_one():
    ref = Reference(model_xml("dummy"))
    assert ref.state_names == []
    b = np.arange(10, dtype=np.float32).reshape(1, 10) - 4.5
    (out,) = ref.run_sequence([{"b": b}])
    np.testing.assert_array_equal(out["a"], b + 1)


# ---------------------------------------------------------------- precision policy


def test_effective_precision_follows_the_cpu():
    """What OpenVINO 2026.4.1 picks, as docs/precision.md states it: by default bf16 where the
    CPU has native bf16 and f32 elsewhere; a bf16 request on a CPU without it is compiled as f32
    without an error; f32 when pinned; ACCURACY mode lowers nothing ("dynamic")."""
    native = "bf16" if cpu_has_native_bf16() else "f32"
    xml = model_xml("lstm")
    assert (Reference(xml).precision, Reference(xml).execution_mode) == (native, "PERFORMANCE")
    assert Reference(xml, config=BF16).precision == native
    assert Reference(xml, config=F32).precision == "f32"
    acc = Reference(xml, config={"EXECUTION_MODE_HINT": "ACCURACY"})
    assert (acc.precision, acc.execution_mode) == ("dynamic", "ACCURACY")


# name -> plugin_config (None: none, OpenVINO's default) for the introspection test.
INTROSPECTED = {
    "lstm_default": None,
    "lstm_f32": F32,
    "lstm_bf16": BF16,
    "lstm_accuracy": {"EXECUTION_MODE_HINT": "ACCURACY"},
    "lstm_accuracy_f32": {"EXECUTION_MODE_HINT": "ACCURACY", **F32},
}


def test_server_reports_effective_precision(start_server):
    """The introspection answer and the start-up log name each model's effective precision and
    execution mode, and they are what OpenVINO Python reports for the same configuration."""
    config = []
    for name, pc in INTROSPECTED.items():
        m = {"name": name, "base_path": str(model_dir("lstm")), "stateful": True}
        if pc is not None:
            m["plugin_config"] = pc
        config.append(m)
    srv = start_server(config=config, cores=1, pin_precision=False)
    reported = {m["name"]: (m["inference_precision"], m["execution_mode"])
                for m in srv.stats()["shards"][0]["models"]}
    log = srv.stderr_text()
    for name, pc in INTROSPECTED.items():
        ref = Reference(model_xml("lstm"), config=pc)
        assert reported[name] == (ref.precision, ref.execution_mode), name
        line = next(line for line in log.splitlines() if f'model "{name}" version 1' in line)
        assert line.endswith(f"inference precision {ref.precision}, execution mode {ref.execution_mode}"), line
        states = [ln for ln in log.splitlines() if f'model "{name}" version 1:   state' in ln]
        assert len(states) == 4, states
        # How each variable is restored after a swap: f32 variables held in f32 by a copy into the
        # plugin's memory (proved at compile time), anything else by set_state.
        for ln in states:
            assert ln.endswith("restored in place)" if ref.precision == "f32" else ")"), ln
            assert ln.endswith(("restored in place)", "restored by set_state)")), ln
    assert reported["lstm_f32"] == ("f32", "PERFORMANCE")
    assert reported["lstm_default"] == reported["lstm_bf16"] == ("bf16" if cpu_has_native_bf16() else "f32",
                                                                 "PERFORMANCE")


@pytest.mark.parametrize("precision", precision_params())
def test_server_equals_in_process_in_each_precision(start_server, precision):
    """A 60-step lstm sequence (and lstm_ti with LowLatency2) served with plugin_config pinning
    `precision` gives, step by step, what in-process OpenVINO gives with the same config."""
    pc = PRECISIONS[precision]
    srv = start_server(config=[
        {"name": "lstm", "base_path": str(model_dir("lstm")), "stateful": True, "plugin_config": pc},
        {"name": "lstm_ti", "base_path": str(model_dir("lstm_ti")), "stateful": True,
         "low_latency_transformation": True, "plugin_config": pc},
    ], cores=1)
    assert {m["name"]: m["inference_precision"] for m in srv.stats()["shards"][0]["models"]} == \
        {"lstm": precision, "lstm_ti": precision}
    steps = _feature_steps(60, seed=77)
    expected = Reference(model_xml("lstm"), config=pc).run_sequence(steps)
    for name, sid in (("lstm", 501), ("lstm_ti", 502)):
        for i, step in enumerate(steps):
            control = START if i == 0 else END if i == len(steps) - 1 else None
            got = output_array(predict_ok(srv.stub, make_request(name, step, seq_id=sid, control=control)), "scores")
            np.testing.assert_allclose(got, expected[i]["scores"], rtol=0, atol=ATOL[precision],
                                       err_msg=f"{name} ({precision}) step {i}")


@pytest.mark.parametrize("key,value", [("INFERENCE_PRECISION_HINT", "bfloat16"), ("EXECUTION_MODE_HINT", "accuracy")])
def test_invalid_precision_hint_is_a_config_error(tmp_path, key, value):
    path = write_config([{"name": "lstm", "base_path": str(model_dir("lstm")), "stateful": True,
                          "plugin_config": {key: value}}], tmp_path, pin=False)
    out = run_binary(["--config_path", str(path), "--port", "9", "--grpc_bind_address", "127.0.0.1"])
    assert out.returncode == 64, out.stderr
    assert f'{key} "{value}" is not one of' in out.stderr, out.stderr
