#!/usr/bin/env python3
"""Drain, snapshot and restore at scale (issue 12): N live LSTM sequences (10^5 by default, each
started and stepped once), SIGTERM with --state_dir, then a restart that restores them.

Reports the drain + snapshot time and the snapshot's size (from the server's shutdown log line and
the file), the restore time (from the restart's log line) and the server's RSS before the drain,
and checks a sample of the sequences continue with the right output (the same frames sent to a
fresh sequence on the restarted server give the same answer as the restored one, bit for bit).

    .venv/bin/python scripts/snapshot_scale.py --sequences 100000 --json /tmp/snapshot.json
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_matrix import ROOT, SERVER, free_port, machine  # noqa: E402

CONCURRENCY = 256


def tensor(arr: np.ndarray, dtype) -> tensor_pb2.TensorProto:
    t = tensor_pb2.TensorProto(dtype=dtype, tensor_content=arr.tobytes())
    t.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in arr.shape]))
    return t


def request(seq_id: int, control: int, frame: np.ndarray) -> predict_pb2.PredictRequest:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = "lstm"
    r.inputs["features"].CopyFrom(tensor(frame, types_pb2.DT_FLOAT))
    r.inputs["sequence_id"].CopyFrom(tensor(np.array([seq_id], np.uint64), types_pb2.DT_UINT64))
    r.inputs["sequence_control_input"].CopyFrom(tensor(np.array([control], np.uint32), types_pb2.DT_UINT32))
    return r


class Server:
    def __init__(self, binary, config, state_dir, log_path):
        self.port = free_port()
        self.log = open(log_path, "w+")
        self.proc = subprocess.Popen([binary, "--config_path", str(config), "--port", str(self.port),
                                      "--grpc_bind_address", "127.0.0.1", "--state_dir", str(state_dir),
                                      "--shutdown_timeout_seconds", "600"], stderr=self.log, stdout=subprocess.DEVNULL)
        deadline = time.time() + 300
        while "seqcore: serving gRPC on" not in self.text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start:\n{self.text()}")
            time.sleep(0.1)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def scores(resp) -> bytes:
    return resp.outputs["scores"].tensor_content


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=200, help="sequences checked after the restore")
    ap.add_argument("--server-bin", default=str(SERVER))
    ap.add_argument("--json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seqcore-snapshot-"))
    state = work / "state"
    config = work / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {
        "name": "lstm", "base_path": str(ROOT / "models/generated/lstm"), "stateful": True,
        "max_sequence_number": a.sequences + 1000, "sequence_timeout_seconds": 3600,
        "plugin_config": {"INFERENCE_PRECISION_HINT": "f32"}}}]}))
    rng = np.random.default_rng(5)
    frames = rng.standard_normal((3, 1, 40)).astype(np.float32)
    ids = range(1, a.sequences + 1)

    srv = Server(a.server_bin, config, state, work / "a.log")
    t0 = time.perf_counter()
    pending = []
    for i in ids:
        pending.append(srv.stub.Predict.future(request(i, 1, frames[0]), timeout=600))
        if len(pending) >= CONCURRENCY:
            for f in pending:
                f.result()
            pending = []
    for f in pending:
        f.result()
    started_s = time.perf_counter() - t0
    live_rss = srv.rss_mib()
    print(f"snapshot_scale: {a.sequences} sequences started in {started_s:.1f} s; server RSS {live_rss:.0f} MiB",
          flush=True)
    t0 = time.perf_counter()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(timeout=900)
    exit_s = time.perf_counter() - t0
    text = srv.text()
    if rc != 0:
        print(text[-3000:])
        return 1
    shutdown_line = next((ln for ln in text.splitlines() if "shutdown:" in ln), "")
    print(f"snapshot_scale: {shutdown_line}", flush=True)
    m = re.search(r"shutdown: (\d+) sequence\(s\) .* \((\d+) bytes\) in (\d+) ms", text)
    size = (state / "sequences.snapshot").stat().st_size
    print(f"snapshot_scale: drain + snapshot {m.group(3) if m else '?'} ms, process exit after {exit_s:.2f} s, "
          f"{size / 2**20:.1f} MiB", flush=True)

    t0 = time.perf_counter()
    b = Server(a.server_bin, config, state, work / "b.log")
    ready_s = time.perf_counter() - t0
    r = re.search(r"(\d+) sequence\(s\) restored, (\d+) dropped, (\d+) bytes in (\d+) ms", b.text())
    print(f"snapshot_scale: restart to ready {ready_s:.2f} s; restore {r.group(4) if r else '?'} ms "
          f"({r.group(1) if r else '?'} restored, {r.group(2) if r else '?'} dropped); RSS {b.rss_mib():.0f} MiB",
          flush=True)
    # A sample continues exactly: the restored sequence and a fresh one fed the same two frames.
    step = max(1, a.sequences // a.sample)
    checked = 0
    for i in list(ids)[::step][: a.sample]:
        got = scores(b.stub.Predict(request(i, 2, frames[1]), timeout=60))
        fresh = 10 ** 9 + i
        b.stub.Predict(request(fresh, 1, frames[0]), timeout=60)
        want = scores(b.stub.Predict(request(fresh, 2, frames[1]), timeout=60))
        if got != want:
            print(f"snapshot_scale: sequence {i} differs after the restore")
            return 1
        checked += 1
    print(f"snapshot_scale: {checked} restored sequences continued bit for bit", flush=True)
    b.proc.send_signal(signal.SIGTERM)
    b.proc.wait(timeout=900)
    out = {"machine": machine(), "sequences": a.sequences, "start_s": round(started_s, 1), "rss_mib": round(live_rss),
           "drain_snapshot_ms": int(m.group(3)) if m else None, "exit_s": round(exit_s, 2),
           "snapshot_bytes": size, "restart_ready_s": round(ready_s, 2),
           "restore_ms": int(r.group(4)) if r else None, "restored": int(r.group(1)) if r else None,
           "dropped": int(r.group(2)) if r else None, "checked": checked}
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
