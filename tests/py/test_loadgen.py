"""Smoke test of the load generator (target/release/loadgen, built by `make build`).

Runs it for a few seconds against a real server with --verify (every answer must be the running
sum of its own sequence) and checks its JSON report: requests were measured, no errors, no
verification failures, and no sequence left behind on the server (the loadgen ENDs every
sequence it started when the run stops).
"""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import ROOT, free_port, model_dir, wait_until

LOADGEN = ROOT / "target" / "release" / "loadgen"
LOADGEN_BIN = os.environ.get("LOADGEN_BIN", str(LOADGEN))


@pytest.fixture(scope="module")
def loadgen_bin():
    if not os.access(LOADGEN_BIN, os.X_OK):
        pytest.fail(f"loadgen binary not found at {LOADGEN_BIN}: run make build "
                    f"(cargo build --release --workspace)", pytrace=False)
    return LOADGEN_BIN


def summator_cfg():
    return [{"name": "summator", "base_path": str(model_dir("summator")), "stateful": True}]


def run_loadgen(binary, srv, tmp_path, *args, timeout=60, addr=None):
    out = tmp_path / "report.json"
    cmd = [binary, "--addr", addr or srv.addr, "--model", "summator", "--cores", "1", "--quiet",
           "--verify", "--json", str(out), *args]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    assert p.returncode == 0, f"loadgen exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return json.loads(out.read_text()), p.stdout


def check_clean(report, srv):
    assert report["requests"] > 0, report
    assert report["errors"]["total"] == 0, report["errors"]
    assert report["verify_failures"] == 0, report["verify_samples"]
    assert report["latency_us"]["count"] == report["requests"]
    assert report["latency_us"]["p50"] > 0
    assert wait_until(lambda: srv.live_sequences("summator") == 0, 5.0), \
        f"{srv.live_sequences('summator')} sequences left on the server"


def test_closed_loop_verified(loadgen_bin, start_server, tmp_path):
    srv = start_server(config=summator_cfg())
    report, stdout = run_loadgen(loadgen_bin, srv, tmp_path, "--sequences", "8", "--sequence-length", "20",
                                 "--length-variation", "0.5", "--connections-per-core", "2",
                                 "--warmup-secs", "0.5", "--duration-secs", "3")
    check_clean(report, srv)
    assert report["sequences"] > 0
    assert report["config"]["loop"] == "closed"
    assert "request latency" in stdout
    # 8 sequences over 2 connections: calls rarely run alone, the figure may be empty but is there.
    assert "client_turnaround_us" in report


def test_open_loop_server_ids_verified(loadgen_bin, start_server, tmp_path):
    srv = start_server(config=summator_cfg())
    report, _ = run_loadgen(loadgen_bin, srv, tmp_path, "--rate", "50", "--sequence-length", "10",
                            "--step-interval-ms", "5", "--server-ids",
                            "--warmup-secs", "0.2", "--duration-secs", "2")
    check_clean(report, srv)
    assert report["config"]["loop"] == "open"
    assert report["dropped_arrivals"] == 0


def test_paced_streams_verified(loadgen_bin, start_server, tmp_path):
    """The real-time workload: 20 streams stepping every 20 ms from random phases, utterances of
    5-15 steps back to back. Far below capacity, so every demanded step is served, on time."""
    srv = start_server(config=summator_cfg())
    report, stdout = run_loadgen(loadgen_bin, srv, tmp_path, "--sequences", "20", "--step-interval-ms", "20",
                                 "--step-jitter-ms", "1", "--sequence-length", "10", "--length-variation", "0.5",
                                 "--warmup-secs", "0.5", "--duration-secs", "3")
    check_clean(report, srv)
    assert report["demanded_requests_per_sec"] == 1000.0
    # Steps land on each stream's 20 ms slots: the window holds 3 s / 20 ms of them per stream.
    assert 0.95 <= report["served_fraction"] <= 1.05, report["served_fraction"]
    assert report["send_lag_us"]["count"] == report["requests"]
    assert report["send_lag_us"]["p50"] < 20_000
    # Utterances of 5-15 steps of 20 ms: many STARTs and ENDs inside the window.
    assert report["sequences"] >= 100, report["sequences"]
    assert "paced: demanded 1000.0 steps/s" in stdout


def test_raw_resident_runs_each_sequence_on_its_own_request(loadgen_bin, tmp_path):
    out = tmp_path / "raw.json"
    p = subprocess.run([loadgen_bin, "--raw", "--raw-resident", "--raw-precision", "f32", "--model", "summator",
                        "--models-dir", str(model_dir("summator").parent), "--sequences", "5",
                        "--sequence-length", "10", "--verify", "--quiet", "--warmup-secs", "0.2",
                        "--duration-secs", "1", "--json", str(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "inference precision f32" in p.stderr
    report = json.loads(out.read_text())
    assert report["config"]["raw_resident"] is True
    assert report["requests"] > 0 and report["sequences"] > 0
    assert report["errors"]["total"] == 0 and report["verify_failures"] == 0


@pytest.mark.parametrize("protocol", ["kserve-grpc", "kserve-stream"])
def test_kserve_verified(loadgen_bin, start_server, tmp_path, protocol):
    srv = start_server(config=summator_cfg())
    report, _ = run_loadgen(loadgen_bin, srv, tmp_path, "--protocol", protocol, "--sequences", "4",
                            "--sequence-length", "15", "--warmup-secs", "0.2", "--duration-secs", "1.5")
    check_clean(report, srv)
    assert report["config"]["protocol"] == protocol


@pytest.mark.parametrize("protocol", ["tfs-rest", "kserve-rest"])
def test_rest_verified_with_metrics(loadgen_bin, start_server, tmp_path, protocol):
    rest = free_port()
    srv = start_server(args=["--rest_port", str(rest)], config=summator_cfg())
    report, _ = run_loadgen(loadgen_bin, srv, tmp_path, "--protocol", protocol, "--sequences", "4",
                            "--sequence-length", "15", "--warmup-secs", "0.2", "--duration-secs", "1.5",
                            "--metrics-url", f"http://127.0.0.1:{rest}/metrics", addr=f"127.0.0.1:{rest}")
    check_clean(report, srv)
    assert "metrics_note" not in report, report.get("metrics_note")
    delta = report["server_metrics_delta"]
    assert any(k.startswith("ovms_requests_success") for k in delta), sorted(delta)[:20]


def test_raw_verified(loadgen_bin, tmp_path):
    """In-process OpenVINO (the physical limit), same sequences and checks, no server."""
    out = tmp_path / "raw.json"
    p = subprocess.run([loadgen_bin, "--raw", "--model", "summator", "--models-dir", str(model_dir("summator").parent),
                        "--sequences", "3", "--sequence-length", "10", "--verify", "--quiet",
                        "--warmup-secs", "0.2", "--duration-secs", "1", "--json", str(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert report["mode"] == "raw"
    assert report["requests"] > 0 and report["sequences"] > 0
    assert report["errors"]["total"] == 0 and report["verify_failures"] == 0


def test_ctrl_c_prints_the_partial_report_and_ends_sequences(loadgen_bin, start_server, tmp_path):
    srv = start_server(config=summator_cfg())
    out = tmp_path / "partial.json"
    p = subprocess.Popen([loadgen_bin, "--addr", srv.addr, "--model", "summator", "--cores", "1", "--quiet",
                          "--verify", "--sequences", "8", "--sequence-length", "1000", "--warmup-secs", "0.2",
                          "--duration-secs", "60", "--json", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    assert "(interrupted)" in stdout
    report = json.loads(out.read_text())
    assert report["interrupted"] is True and report["window_secs"] < 5
    check_clean(report, srv)


def test_bad_model_is_a_clear_error(loadgen_bin, start_server, tmp_path):
    srv = start_server(config=summator_cfg())
    p = subprocess.run([loadgen_bin, "--addr", srv.addr, "--model", "nope", "--duration-secs", "1"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert p.returncode == 2
    assert "nope" in p.stderr and "NOT_FOUND" in p.stderr, p.stderr


def test_a_silent_server_times_out(loadgen_bin):
    """A server that accepts the connection and never answers: the request timeout fires (the
    loadgen's per-request deadlines are checked by a ticker, not a glommio timer per request)."""
    import socket
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # the kernel completes the TCP handshake; nothing is ever read or sent
        port = listener.getsockname()[1]
        t0 = time.monotonic()
        p = subprocess.run([loadgen_bin, "--addr", f"127.0.0.1:{port}", "--timeout-ms", "300", "--quiet"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        waited = time.monotonic() - t0
    assert p.returncode == 2, p.stderr
    assert "no answer before the timeout" in p.stderr, p.stderr
    assert 0.3 <= waited < 10, waited


def test_write_request_is_what_a_run_sends(loadgen_bin, start_server, tmp_path):
    """--write-request: the bytes another client (h2load) sends for the loadgen comparison in
    make bench; they must be a valid PredictRequest for the sequence id it prints."""
    from tensorflow_serving.apis import predict_pb2
    srv = start_server(config=summator_cfg())
    body = tmp_path / "body.bin"
    p = subprocess.run([loadgen_bin, "--addr", srv.addr, "--model", "summator", "--id-namespace", "5",
                        "--write-request", str(body)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    raw = body.read_bytes()
    assert info["bytes"] == len(raw) and raw[0] == 0
    assert int.from_bytes(raw[1:5], "big") == len(raw) - 5
    req = predict_pb2.PredictRequest.FromString(raw[5:])
    assert req.model_spec.name == "summator"
    assert info["sequence_id"] == 5 << 40
    assert list(req.inputs["sequence_id"].uint64_val) == [5 << 40]
    assert list(req.inputs["sequence_control_input"].uint32_val) == [0]
    assert info["method"] == "/tensorflow.serving.PredictionService/Predict"
