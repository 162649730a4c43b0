"""Checks the generated models (scripts/gen_models.py) in-process with OpenVINO.

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
from reference import Reference, model_xml, repo_root  # noqa: E402

GEN = repo_root() / "scripts" / "gen_models.py"
OVMS_SUMMATOR = repo_root().parent / "shared" / "models" / "ovms-summator" / "1" / "summator.xml"
MODELS = ("summator", "lstm", "lstm_ti", "dummy")
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
    ref = Reference(model_xml("lstm"))
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


def test_lstm_ti_low_latency_equals_lstm():
    steps = _feature_steps(20)
    ti = Reference(model_xml("lstm_ti"), low_latency=True)
    assert len(ti.state_names) == 4
    expected = Reference(model_xml("lstm")).run_sequence(steps)
    got = ti.run_sequence(steps)
    diff = max(float(np.max(np.abs(a["scores"] - b["scores"]))) for a, b in zip(expected, got))
    assert diff <= 1e-5
    # And twice in a row on the same request (state reset between sequences).
    got2 = ti.run_sequence(steps)
    for a, b in zip(got, got2):
        np.testing.assert_array_equal(a["scores"], b["scores"])


def test_lstm_ti_without_low_latency_is_stateless():
    steps = _feature_steps(5)
    ti = Reference(model_xml("lstm_ti"))
    assert ti.state_names == []
    lstm = Reference(model_xml("lstm"))
    got = ti.run_sequence(steps)
    # Every step of the plain TI model equals lstm's *first* step on that input.
    for step, out in zip(steps, got):
        first = lstm.run_sequence([step])[0]
        np.testing.assert_allclose(out["scores"], first["scores"], atol=1e-5)
    # ... which is not what the stateful lstm gives from step 2 on.
    full = lstm.run_sequence(steps)
    assert np.max(np.abs(full[1]["scores"] - got[1]["scores"])) > 1e-3


def test_dummy_adds_one():
    ref = Reference(model_xml("dummy"))
    assert ref.state_names == []
    b = np.arange(10, dtype=np.float32).reshape(1, 10) - 4.5
    (out,) = ref.run_sequence([{"b": b}])
    np.testing.assert_array_equal(out["a"], b + 1)
