"""Shared fixtures and helpers for seqcore's integration tests.

Every test here talks to a real seqcore process over gRPC using UPSTREAM's generated
TF-Serving stubs (package tensorflow-serving-client-grpc), never stubs generated from
seqcore's own proto/ directory: that is what makes these tests a wire-compatibility check.

The binary is `target/release/seqcore` unless the environment variable SEQCORE_BIN names
another one. Servers listen on 127.0.0.1 only, on a free port picked by the OS.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import model_xml, repo_root  # noqa: E402,F401

ROOT = repo_root()
BIN = Path(os.environ.get("SEQCORE_BIN", str(ROOT / "target" / "release" / "seqcore")))
GENERATED = ROOT / "models" / "generated"
# OVMS's own summator test model, from the shared folder that sits beside the repo (also in CI).
OVMS_SUMMATOR_DIR = ROOT.parent / "shared" / "models" / "ovms-summator"


def require_ovms_summator() -> Path:
    """OVMS's summator lives in ../shared (always there in CI, where its absence fails the test);
    a checkout without it skips the few tests that serve it, saying why."""
    if not OVMS_SUMMATOR_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"OVMS summator test model missing at {OVMS_SUMMATOR_DIR}")
        pytest.skip(f"OVMS's summator is not beside the repo ({OVMS_SUMMATOR_DIR})")
    return OVMS_SUMMATOR_DIR


READY_LINE = "seqcore: serving gRPC on"
READY_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 20.0

START, NO_CONTROL, END = 1, 0, 2


def model_dir(name: str) -> Path:
    """The base path (directory holding version dirs) of a generated model."""
    return GENERATED / name


# --------------------------------------------------------------------------------------------
# Binary check
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seqcore_bin() -> Path:
    if not BIN.is_file() or not os.access(BIN, os.X_OK):
        pytest.fail(f"seqcore binary not found at {BIN}: run make test / cargo build --release "
                    f"(or point SEQCORE_BIN at a built binary)", pytrace=False)
    for name in ("summator", "lstm", "lstm_ti", "dummy"):
        if not (GENERATED / name / "1" / "model.xml").is_file():
            pytest.fail(f"generated model {name} missing under {GENERATED}: run scripts/gen_models.py",
                        pytrace=False)
    return BIN


# --------------------------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------------------------

_LIVE_SERVERS: list["Server"] = []


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


# The suite's numeric checks (exact running sums, 1e-5 on the LSTM) assume f32. OpenVINO's CPU
# plugin runs bf16 by default where the CPU has native bf16, so every model a test's config
# serves is pinned to f32 unless the test sets a precision itself (either key in its
# plugin_config) or passes pin=False (start_server: pin_precision=False) to test OpenVINO's
# default. See docs/precision.md.
PINNED_PRECISION = {"INFERENCE_PRECISION_HINT": "f32"}
PRECISION_KEYS = ("INFERENCE_PRECISION_HINT", "EXECUTION_MODE_HINT")


def pinned(model: dict) -> dict:
    """`model` with PINNED_PRECISION added to its plugin_config, unless it chooses one itself."""
    pc = model.get("plugin_config", {})
    if any(k in pc for k in PRECISION_KEYS):
        return model
    return {**model, "plugin_config": {**pc, **PINNED_PRECISION}}


def write_config(models: list[dict], directory: Path, pin: bool = True) -> Path:
    """Writes an OVMS config.json whose model_config_list holds `models` (each a config dict),
    each pinned to f32 (`pinned`) unless `pin` is False."""
    path = directory / "config.json"
    if pin:
        models = [pinned(m) for m in models]
    path.write_text(json.dumps({"model_config_list": [{"config": m} for m in models]}, indent=1))
    return path


def run_binary(args: list[str], env: dict | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Runs seqcore to completion (for start-up errors); returns the CompletedProcess."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([str(BIN), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, env=full_env)


class Server:
    """A running seqcore process plus a gRPC channel to it."""

    def __init__(self, args: list[str], workdir: Path, label: str = "seqcore"):
        self.port = free_port()
        self.label = label
        self.workdir = workdir
        self.stderr_path = workdir / f"{label}-{self.port}.stderr"
        self.args = [*args, "--port", str(self.port), "--grpc_bind_address", "127.0.0.1"]
        self._stderr = open(self.stderr_path, "w+b")
        self.proc = subprocess.Popen([str(BIN), *self.args], stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, stdin=subprocess.DEVNULL)
        _LIVE_SERVERS.append(self)
        self._channels: list[grpc.Channel] = []
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.addr = f"127.0.0.1:{self.port}"
        self.channel = self.new_channel()
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return "<stderr unavailable>"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if READY_LINE in self.stderr_text():
                return
            rc = self.proc.poll()
            if rc is not None:
                raise RuntimeError(f"seqcore exited with {rc} before it was ready; args {self.args}\n"
                                   f"stderr:\n{self.stderr_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"seqcore not ready after {READY_TIMEOUT_S} s; args {self.args}\n"
                           f"stderr:\n{self.stderr_text()}")

    def new_channel(self, separate_connection: bool = True) -> grpc.Channel:
        opts = [("grpc.use_local_subchannel_pool", 1)] if separate_connection else []
        ch = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=opts)
        grpc.channel_ready_future(ch).result(timeout=10)
        self._channels.append(ch)
        return ch

    def stop(self) -> None:
        for ch in getattr(self, "_channels", []):
            ch.close()
        self._channels = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._stderr.close()
        if self in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(self)

    # --- RPC conveniences -------------------------------------------------------------------

    def predict(self, request, stub=None):
        return call_predict(stub or self.stub, request)

    def stats(self, channel=None) -> dict:
        return get_stats(channel or self.channel)

    def live_sequences(self, model: str) -> int:
        return sum(m["live_sequences"] for sh in self.stats()["shards"] for m in sh["models"]
                   if m["name"] == model)

    def model_counter(self, model: str, key: str) -> int:
        return sum(m[key] for sh in self.stats()["shards"] for m in sh["models"] if m["name"] == model)


def server_args_for_config(models: list[dict], directory: Path, pin: bool = True) -> list[str]:
    return ["--config_path", str(write_config(models, directory, pin))]


@pytest.fixture
def start_server(seqcore_bin, tmp_path):
    """start_server(args=None, config=None, cores=None) -> Server; stopped at teardown.

    `config` is a list of model config dicts (written to an OVMS config.json, each model pinned
    to f32 unless `pin_precision` is False), `args` a list of CLI arguments; `cores` adds
    --cores N.
    """
    started: list[Server] = []

    def _start(args: list[str] | None = None, config: list[dict] | None = None,
               cores: int | None = None, label: str = "seqcore", pin_precision: bool = True) -> Server:
        full = list(args or [])
        if config is not None:
            # Each server its own config file: a running server re-reads its file every second
            # (--file_system_poll_wait_seconds), so two servers must not share one.
            directory = tmp_path / f"config-{len(started)}"
            directory.mkdir(exist_ok=True)
            full += server_args_for_config(config, directory, pin_precision)
        if cores is not None:
            full += ["--cores", str(cores)]
        srv = Server(full, tmp_path, label=label)
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()


def module_server(seqcore_bin, tmp_path_factory, config: list[dict], cores: int | None = None,
                  label: str = "seqcore", extra_args: list[str] | None = None) -> Server:
    """Starts a server for a module-scoped fixture (the caller stops it)."""
    d = tmp_path_factory.mktemp(label)
    args = server_args_for_config(config, d) + list(extra_args or [])
    if cores is not None:
        args += ["--cores", str(cores)]
    return Server(args, d, label=label)


@pytest.fixture(autouse=True)
def _stop_servers_started_by_the_test():
    """Every server a test starts in its body is stopped when the test ends, however it ends
    (module-scoped servers are set up before this fixture and are left to their fixtures)."""
    before = set(map(id, _LIVE_SERVERS))
    yield
    for srv in [s for s in _LIVE_SERVERS if id(s) not in before]:
        srv.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failing test, attach the stderr of every seqcore still running."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in list(_LIVE_SERVERS):
            text = srv.stderr_text()
            if len(text) > 8000:
                text = "...\n" + text[-8000:]
            report.sections.append((f"seqcore stderr ({srv.label}, port {srv.port}, args {srv.args})", text))


# --------------------------------------------------------------------------------------------
# Request building
# --------------------------------------------------------------------------------------------


def shape_proto(dims) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def f32_tensor(arr) -> tensor_pb2.TensorProto:
    """A DT_FLOAT tensor with its values in tensor_content (what OVMS clients send)."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto(a.shape),
                                  tensor_content=a.tobytes())


def f32_tensor_vals(arr) -> tensor_pb2.TensorProto:
    """A DT_FLOAT tensor with its values in float_val."""
    a = np.asarray(arr, dtype=np.float32)
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto(a.shape),
                                  float_val=a.ravel().tolist())


def special_tensor(name: str, values, *, field: str | None = None, dims=(1,), shape=True,
                   dtype=None) -> tensor_pb2.TensorProto:
    """A special input (sequence_id / sequence_control_input).

    Default: shape [1], values in uint64_val (sequence_id) or uint32_val (control), the matching
    dtype. `field` picks another container ("uint64_val", "uint32_val", "int64_val",
    "tensor_content"...), `dims` another shape, `shape=False` leaves tensor_shape unset,
    `shape="scalar"` sets a tensor_shape with no dims.
    """
    is_id = name == "sequence_id"
    if field is None:
        field = "uint64_val" if is_id else "uint32_val"
    if dtype is None:
        dtype = types_pb2.DT_UINT64 if is_id else types_pb2.DT_UINT32
    t = tensor_pb2.TensorProto(dtype=dtype)
    if shape == "scalar":
        t.tensor_shape.SetInParent()  # present on the wire, with no dims
    elif shape:
        t.tensor_shape.CopyFrom(shape_proto(dims))
    values = list(values)
    if field == "tensor_content":
        np_dtype = np.uint64 if is_id else np.uint32
        t.tensor_content = np.asarray(values, dtype=np_dtype).tobytes()
    else:
        getattr(t, field).extend(values)
    return t


def seq_id_tensor(v, **kw):
    return special_tensor("sequence_id", [v], **kw)


def control_tensor(v, **kw):
    return special_tensor("sequence_control_input", [v], **kw)


def make_request(model: str, inputs: dict, *, seq_id=None, control=None, version: int | None = None,
                 raw_inputs: dict | None = None) -> predict_pb2.PredictRequest:
    """A PredictRequest. `inputs` maps names to numpy arrays (sent as f32 tensor_content);
    seq_id / control, when not None, add the special inputs in their standard form;
    raw_inputs adds ready-made TensorProtos (for malformed variants)."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if version is not None:
        req.model_spec.version.value = version
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(v if isinstance(v, tensor_pb2.TensorProto) else f32_tensor(v))
    if seq_id is not None:
        req.inputs["sequence_id"].CopyFrom(seq_id_tensor(seq_id))
    if control is not None:
        req.inputs["sequence_control_input"].CopyFrom(control_tensor(control))
    for k, v in (raw_inputs or {}).items():
        req.inputs[k].CopyFrom(v)
    return req


def summator_request(value: float, *, seq_id=None, control=None, model="summator", **kw):
    return make_request(model, {"input": np.array([[value]], dtype=np.float32)}, seq_id=seq_id,
                        control=control, **kw)


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def call_predict(stub, request, timeout: float = RPC_TIMEOUT_S):
    """Returns (response, None) on success or (None, (code, details)) on a gRPC error."""
    try:
        return stub.Predict(request, timeout=timeout), None
    except grpc.RpcError as e:
        return None, (e.code(), e.details())


def predict_ok(stub, request, timeout: float = RPC_TIMEOUT_S):
    """Predict that must succeed; raises RpcError (with code and details) otherwise."""
    resp, err = call_predict(stub, request, timeout)
    if err is not None:
        raise RpcError(*err)
    return resp


def predict_err(stub, request, timeout: float = RPC_TIMEOUT_S):
    """Predict that must fail; returns (code, details)."""
    resp, err = call_predict(stub, request, timeout)
    assert err is not None, f"expected an error, got a response {resp}"
    return err


def output_array(resp, name: str) -> np.ndarray:
    """A model output (DT_FLOAT) from a PredictResponse as a numpy array of its shape."""
    t = resp.outputs[name]
    assert t.dtype == types_pb2.DT_FLOAT, f"output {name} dtype {t.dtype}"
    dims = [d.size for d in t.tensor_shape.dim]
    if t.tensor_content:
        a = np.frombuffer(t.tensor_content, dtype=np.float32)
    else:
        a = np.asarray(t.float_val, dtype=np.float32)
    return a.reshape(dims)


def response_seq_id(resp) -> int:
    """The sequence_id output, checked to have OVMS's form: DT_UINT64, shape [1], uint64_val."""
    t = resp.outputs["sequence_id"]
    assert t.dtype == types_pb2.DT_UINT64
    assert [d.size for d in t.tensor_shape.dim] == [1]
    assert len(t.uint64_val) == 1, t
    return int(t.uint64_val[0])


def summator_out(resp) -> float:
    return float(output_array(resp, "add_sum").reshape(-1)[0])


# --------------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------------


def _decode_stats(data: bytes) -> dict:
    """Decodes GetStatsResponse { string json = 1; } by hand."""
    if not data:
        return json.loads("{}")
    assert data[0] == 0x0A, f"unexpected tag {data[0]:#x}"
    i, shift, n = 1, 0, 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return json.loads(data[i:i + n].decode("utf-8"))


def get_stats(channel) -> dict:
    fn = channel.unary_unary("/seqcore.v1.Introspection/GetStats",
                             request_serializer=lambda _: b"", response_deserializer=_decode_stats)
    return fn(None, timeout=RPC_TIMEOUT_S)


def sequences_by_shard(stats: dict, model: str) -> dict[int, dict[int, int]]:
    """{shard: {sequence_id: steps}} for one model."""
    out: dict[int, dict[int, int]] = {}
    for sh in stats["shards"]:
        for m in sh["models"]:
            if m["name"] == model:
                out.setdefault(sh["shard"], {}).update({int(i): int(s) for i, s in m["sequences"]})
    return out


# --------------------------------------------------------------------------------------------
# Routing (mirror of src/shard/router.rs, used only to pick ids that land on given shards)
# --------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1


def shard_of(seq_id: int, shards: int) -> int:
    x = seq_id & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return (x * shards) >> 64


# --------------------------------------------------------------------------------------------
# Misc
# --------------------------------------------------------------------------------------------


def run_threads(fn, args_list, timeout: float = 120.0):
    """Runs fn(*args) for each args in threads; returns results in order, re-raising the first
    exception."""
    results = [None] * len(args_list)
    errors: list[BaseException] = []

    def wrap(i, a):
        try:
            results[i] = fn(*a)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i, a), daemon=True) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "worker threads did not finish in time"
    if errors:
        raise errors[0]
    return results


def wait_until(pred, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()

