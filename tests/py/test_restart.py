"""Sequences that survive a restart (issue 12, part 1): SIGTERM drains the server and, with
--state_dir, writes every live sequence to a snapshot; the next start restores them, and the
clients' next steps continue with correct results, over every protocol. A snapshot that cannot
be trusted is refused with a message naming what is wrong; after a crash the sequences are gone
(NOT_FOUND), never stale.

Real server, real OpenVINO, upstream's TF-Serving stubs, tritonclient, curl.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import (END, NO_CONTROL, START, model_dir, make_request, output_array, predict_err, predict_ok,
                      run_binary, summator_out, summator_request, write_config)
from rest_helpers import RestServer, curl_json

SNAPSHOT = "sequences.snapshot"
MISSING = "Sequence with provided ID does not exist"
MODELS = [
    {"name": "summator", "base_path": str(model_dir("summator")), "stateful": True},
    {"name": "lstm", "base_path": str(model_dir("lstm")), "stateful": True},
]

def start(tmp_path: Path, state_dir: Path, models=None, label="seqcore-restart") -> RestServer:
    d = tmp_path / f"{label}-{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    cfg = write_config(models or MODELS, d)
    srv = RestServer(["--config_path", str(cfg), "--state_dir", str(state_dir)], d, label=label)
    return srv


def shut_down(srv: RestServer, sig=signal.SIGTERM, expect_rc: int | None = 0) -> str:
    """Signals the server, waits for it to exit; returns its stderr."""
    for ch in srv._channels:
        ch.close()
    srv._channels = []
    srv.proc.send_signal(sig)
    rc = srv.proc.wait(timeout=60)
    if expect_rc is not None:
        assert rc == expect_rc, f"exit {rc}\n{srv.stderr_text()}"
    text = srv.stderr_text()
    srv.stop()
    return text


def kserve_grpc_step(srv, value: float, seq_id: str, start=False, end=False) -> float:
    import tritonclient.grpc as tc
    c = tc.InferenceServerClient(srv.addr)
    x = tc.InferInput("input", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[value]], np.float32))
    r = c.infer("summator", [x], sequence_id=seq_id, sequence_start=start, sequence_end=end)
    c.close()
    return float(r.as_numpy("add_sum")[0][0])


def kserve_rest_step(srv, value: float, seq_id: int, control: int) -> float:
    body = {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [value]}],
            "parameters": {"sequence_id": seq_id, "sequence_start": control == START, "sequence_end": control == END}}
    code, out = curl_json("POST", f"{srv.base}/v2/models/summator/infer", body)
    assert code == 200, (code, out)
    return float(out["outputs"][0]["data"][0])


def tfs_rest_step(srv, value: float, seq_id: int, control: int) -> float:
    body = {"inputs": {"input": [[value]], "sequence_id": [seq_id], "sequence_control_input": [control]}}
    code, out = curl_json("POST", f"{srv.base}/v1/models/summator:predict", body)
    assert code == 200, (code, out)
    return float(out["outputs"]["add_sum"][0][0])


def lstm_steps(srv, seq_id: int, frames, first: bool, last: bool):
    outs = []
    for i, f in enumerate(frames):
        control = START if (first and i == 0) else (END if (last and i == len(frames) - 1) else NO_CONTROL)
        resp = predict_ok(srv.stub, make_request("lstm", {"features": f}, seq_id=seq_id, control=control))
        outs.append(output_array(resp, "scores"))
    return outs


def test_sequences_of_every_protocol_continue_across_a_restart(tmp_path):
    state = tmp_path / "state"
    a = start(tmp_path, state)
    # One sequence per protocol, each a few steps in.
    assert summator_out(predict_ok(a.stub, summator_request(1.0, seq_id=101, control=START))) == 1.0
    assert summator_out(predict_ok(a.stub, summator_request(2.0, seq_id=101))) == 3.0
    assert tfs_rest_step(a, 5.0, 102, START) == 5.0
    assert kserve_grpc_step(a, 7.0, "utt-103", start=True) == 7.0
    assert kserve_grpc_step(a, 1.0, "utt-103") == 8.0
    assert kserve_rest_step(a, 4.0, 104, START) == 4.0
    rng = np.random.default_rng(11)
    frames = rng.standard_normal((10, 1, 40)).astype(np.float32)
    before = lstm_steps(a, 105, frames[:5], first=True, last=False)
    text = shut_down(a)
    assert "shutdown: 5 sequence(s)" in text and "written to" in text, text
    assert (state / SNAPSHOT).is_file()

    b = start(tmp_path, state)
    assert "5 sequence(s) restored, 0 dropped" in b.stderr_text()
    assert not (state / SNAPSHOT).exists(), "a restored snapshot is consumed"
    assert summator_out(predict_ok(b.stub, summator_request(3.0, seq_id=101, control=END))) == 6.0
    assert tfs_rest_step(b, 1.0, 102, END) == 6.0
    assert kserve_grpc_step(b, 2.0, "utt-103", end=True) == 10.0
    assert kserve_rest_step(b, 1.0, 104, END) == 5.0
    after = lstm_steps(b, 105, frames[5:], first=False, last=True)
    # The same ten frames as one uninterrupted sequence: the restored state is bit for bit.
    whole = lstm_steps(b, 106, frames, first=True, last=True)
    for i, (got, want) in enumerate(zip(before + after, whole)):
        np.testing.assert_array_equal(got, want, err_msg=f"step {i}")
    assert b.live_sequences("summator") == 0 and b.live_sequences("lstm") == 0


def test_a_crash_loses_the_sequences_rather_than_restoring_stale_ones(tmp_path):
    state = tmp_path / "state"
    a = start(tmp_path, state)
    predict_ok(a.stub, summator_request(1.0, seq_id=201, control=START))
    shut_down(a)
    b = start(tmp_path, state)
    assert summator_out(predict_ok(b.stub, summator_request(1.0, seq_id=201))) == 2.0
    shut_down(b, signal.SIGKILL, expect_rc=None)
    assert not (state / SNAPSHOT).exists()
    c = start(tmp_path, state)
    assert predict_err(c.stub, summator_request(1.0, seq_id=201)) == (grpc.StatusCode.NOT_FOUND, MISSING)


def good_snapshot(tmp_path: Path) -> bytes:
    state = tmp_path / "made"
    a = start(tmp_path, state, label="seqcore-maker")
    predict_ok(a.stub, summator_request(2.5, seq_id=301, control=START))
    shut_down(a)
    return (state / SNAPSHOT).read_bytes()


@pytest.mark.parametrize("damage,message", [
    ("truncated", "truncated"),
    ("flipped", "checksum mismatch: the file is corrupt"),
    ("format", "snapshot format 7; this server reads format 1"),
    ("garbage", "not a seqcore snapshot"),
])
def test_a_damaged_snapshot_is_refused_and_the_server_starts_without_it(tmp_path, damage, message):
    data = bytearray(good_snapshot(tmp_path))
    if damage == "truncated":
        data = data[: len(data) - 9]
    elif damage == "flipped":
        data[30] ^= 0x40
    elif damage == "format":
        data[8:12] = (7).to_bytes(4, "little")
    else:
        data = bytearray(b"hello, world")
    state = tmp_path / "state"
    state.mkdir()
    (state / SNAPSHOT).write_bytes(bytes(data))
    srv = start(tmp_path, state)
    text = srv.stderr_text()
    assert message in text and "starting without its sequences" in text, text
    assert predict_err(srv.stub, summator_request(1.0, seq_id=301)) == (grpc.StatusCode.NOT_FOUND, MISSING)
    assert summator_out(predict_ok(srv.stub, summator_request(1.0, seq_id=302, control=START))) == 1.0


def test_a_snapshot_for_other_state_variables_is_refused_naming_them(tmp_path):
    data = good_snapshot(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / SNAPSHOT).write_bytes(data)
    # "summator" is now the LSTM: other variables under the same name and version.
    other = [{"name": "summator", "base_path": str(model_dir("lstm")), "stateful": True}]
    srv = start(tmp_path, state, models=other)
    text = srv.stderr_text()
    assert 'model "summator" version 1: its state variables differ (snapshot [state f32 [1, 1]]' in text, text
    assert "its 1 sequence(s) are dropped" in text and "0 sequence(s) restored, 1 dropped" in text, text
    rng = np.random.default_rng(1)
    f = rng.standard_normal((1, 40)).astype(np.float32)
    code, details = predict_err(srv.stub, make_request("summator", {"features": f}, seq_id=301))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, MISSING)


def test_an_unwritable_state_dir_refuses_to_start(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    cfg = write_config(MODELS[:1], tmp_path)
    proc = run_binary(["--config_path", str(cfg), "--state_dir", str(not_a_dir), "--port", "9",
                       "--grpc_bind_address", "127.0.0.1"])
    assert proc.returncode == 64, proc.stderr
    assert f"--state_dir {not_a_dir}" in proc.stderr, proc.stderr


def test_a_state_dir_gone_at_shutdown_reports_the_error(tmp_path):
    state = tmp_path / "state"
    a = start(tmp_path, state)
    predict_ok(a.stub, summator_request(1.0, seq_id=401, control=START))
    shutil.rmtree(state)
    state.write_text("now a file")
    text = shut_down(a, expect_rc=1)
    assert "not written" in text and str(state) in text, text
    assert state.read_text() == "now a file"


def test_a_shutdown_is_not_ready_and_refuses_new_sequences_at_once(tmp_path):
    """A shutdown without a snapshot: the process exits 0 promptly and says how many sequences
    end with it; readiness is checked through the log line it writes first."""
    d = tmp_path / "plain"
    d.mkdir()
    cfg = write_config(MODELS[:1], d)
    srv = RestServer(["--config_path", str(cfg)], d, label="seqcore-plain")
    predict_ok(srv.stub, summator_request(1.0, seq_id=501, control=START))
    t0 = time.monotonic()
    text = shut_down(srv)
    assert time.monotonic() - t0 < 10
    assert "shutting down (not ready, no new connections or sequences" in text
    assert "1 live sequence(s) end with the process (no --state_dir)" in text, text


def test_a_shutdown_during_a_reload_still_writes_the_snapshot(tmp_path):
    """SIGTERM while a reload compiles several models: the reload gives way (or is done), and the
    drain writes the live sequence; the next start restores it."""
    import threading
    state = tmp_path / "state"
    a = start(tmp_path, state)
    predict_ok(a.stub, summator_request(2.0, seq_id=601, control=START))
    cfg = next(a.workdir.glob("config.json"))
    many = MODELS + [{"name": f"lstm_{k}", "base_path": str(model_dir("lstm")), "stateful": True} for k in range(6)]
    write_config(many, a.workdir)
    reload = threading.Thread(target=lambda: curl_json("POST", f"{a.base}/v1/config/reload"))
    reload.start()
    time.sleep(0.15)
    t0 = time.monotonic()
    text = shut_down(a)
    reload.join(timeout=30)
    assert time.monotonic() - t0 < 20
    assert "written to" in text, text
    assert cfg.is_file()
    b = start(tmp_path, state)
    assert "1 sequence(s) restored" in b.stderr_text(), b.stderr_text()
    assert summator_out(predict_ok(b.stub, summator_request(1.0, seq_id=601, control=END))) == 3.0
