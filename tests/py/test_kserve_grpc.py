"""KServe v2 gRPC API (`inference.GRPCInferenceService`) with Triton's client.

Sequences in both conventions (Triton's sequence parameters and OVMS's special input tensors),
ModelStreamInfer with a long sequence on one stream, metadata/readiness, and the error cases.
Requests go over the wire with tritonclient.grpc (its own generated stubs), never with stubs
generated from seqcore's proto/ directory.
"""

import itertools
import queue
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import model_dir, module_server

MSG_ID_NOT_PROVIDED = "Sequence ID has not been provided in request inputs"
MSG_MISSING = "Sequence with provided ID does not exist"
MSG_EXISTS = "Sequence with provided ID already exists"
MSG_NO_MODEL = "Model with requested name is not found"
MSG_ID_BAD_TYPE = "Could not find sequence id in expected tensor proto field uint64_val"
MSG_BAD_CONTROL = "Unexpected value of sequence control input"


@pytest.fixture(scope="module")
def srv(seqcore_bin, tmp_path_factory):
    """summator (stateful) + dummy (stateless)."""
    config = [
        {"name": "summator", "base_path": str(model_dir("summator")), "stateful": True},
        {"name": "dummy", "base_path": str(model_dir("dummy"))},
    ]
    s = module_server(seqcore_bin, tmp_path_factory, config, label="kserve")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv):
    c = tc.InferenceServerClient(url=srv.addr)
    yield c
    c.close()


@pytest.fixture(scope="module")
def raw(srv):
    """Triton's generated stub, for requests tritonclient's helpers cannot express."""
    ch = grpc.insecure_channel(srv.addr)
    yield service_pb2_grpc.GRPCInferenceServiceStub(ch)
    ch.close()


_ids = itertools.count(1_000)
_ids_lock = threading.Lock()


def fresh_id() -> int:
    with _ids_lock:
        return next(_ids)


def summator_input(value: float, datatype: str = "FP32"):
    dtype = {"FP32": np.float32, "FP64": np.float64}[datatype]
    i = tc.InferInput("input", [1, 1], datatype)
    i.set_data_from_numpy(np.array([[value]], dtype=dtype))
    return i


def special_inputs(seq_id=None, control=None):
    out = []
    if seq_id is not None:
        i = tc.InferInput("sequence_id", [1], "UINT64")
        i.set_data_from_numpy(np.array([seq_id], dtype=np.uint64))
        out.append(i)
    if control is not None:
        i = tc.InferInput("sequence_control_input", [1], "UINT32")
        i.set_data_from_numpy(np.array([control], dtype=np.uint32))
        out.append(i)
    return out


def out_sum(result) -> float:
    return float(result.as_numpy("add_sum").reshape(-1)[0])


def param(resp, name):
    p = resp.parameters[name]
    return getattr(p, p.WhichOneof("parameter_choice"))


def infer_error(fn) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value


def raw_request(value: float, **params) -> service_pb2.ModelInferRequest:
    """A summator ModelInferRequest with typed contents and the given parameters (a value is
    set in the InferParameter field named by its key's suffix, e.g. sequence_id__uint64_param)."""
    req = service_pb2.ModelInferRequest(model_name="summator")
    t = req.inputs.add(name="input", datatype="FP32", shape=[1, 1])
    t.contents.fp32_contents.append(value)
    for key, v in params.items():
        name, field = key.split("__")
        setattr(req.parameters[name], field, v)
    return req


# ---------------------------------------------------------------------------------------------
# Server and model metadata
# ---------------------------------------------------------------------------------------------


def test_server_live_ready_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    md = client.get_server_metadata()
    assert md.name == "seqcore"
    assert md.version
    assert "sequence" in md.extensions


def test_model_ready_and_metadata(client):
    assert client.is_model_ready("summator")
    assert client.is_model_ready("summator", "1")
    assert client.is_model_ready("dummy")
    md = client.get_model_metadata("summator")
    assert md.name == "summator"
    assert list(md.versions) == ["1"]
    assert md.platform == "openvino"
    # The special inputs are not model inputs.
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("input", "FP32", [1, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == [("add_sum", "FP32", [1, 1])]
    md = client.get_model_metadata("dummy")
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("b", "FP32", [1, 10])]


def test_unknown_model_is_not_found(client):
    for call in (lambda: client.is_model_ready("nope"), lambda: client.get_model_metadata("nope"),
                 lambda: client.infer("nope", [summator_input(1.0)])):
        e = infer_error(call)
        assert e.status() == "StatusCode.NOT_FOUND"
        assert e.message() == MSG_NO_MODEL
    e = infer_error(lambda: client.get_model_metadata("summator", "7"))
    assert e.status() == "StatusCode.NOT_FOUND"
    assert e.message() == "Model with requested version is not found"


# ---------------------------------------------------------------------------------------------
# Triton's sequence parameters
# ---------------------------------------------------------------------------------------------


def run_triton_sequence(client, seq_id, values):
    total = 0.0
    for i, v in enumerate(values):
        r = client.infer("summator", [summator_input(v)], sequence_id=seq_id, request_id=f"r{i}",
                         sequence_start=(i == 0), sequence_end=(i == len(values) - 1))
        total += v
        assert out_sum(r) == pytest.approx(total), (seq_id, i)
        resp = r.get_response()
        assert resp.id == f"r{i}"
        assert resp.model_name == "summator" and resp.model_version == "1"
        # The id comes back with the type it was sent with (tritonclient: int64 or string).
        assert param(resp, "sequence_id") == seq_id
        # Triton convention: no sequence_id output tensor.
        assert r.as_numpy("sequence_id") is None


def test_triton_numeric_and_string_ids(client):
    n = fresh_id()
    run_triton_sequence(client, n, [1.0, 2.0, 3.5, -1.0])
    run_triton_sequence(client, f"corr-{fresh_id()}", [10.0, 20.0, 30.0])


def test_numeric_and_string_ids_are_distinct_sequences(client):
    n = fresh_id()
    client.infer("summator", [summator_input(1.0)], sequence_id=n, sequence_start=True)
    # The same digits as a string are another sequence: it does not exist yet.
    e = infer_error(lambda: client.infer("summator", [summator_input(1.0)], sequence_id=str(n)))
    assert e.status() == "StatusCode.NOT_FOUND" and e.message() == MSG_MISSING
    client.infer("summator", [summator_input(100.0)], sequence_id=str(n), sequence_start=True)
    r = client.infer("summator", [summator_input(2.0)], sequence_id=n, sequence_end=True)
    assert out_sum(r) == 3.0
    r = client.infer("summator", [summator_input(5.0)], sequence_id=str(n), sequence_end=True)
    assert out_sum(r) == 105.0


def test_interleaved_sequences(client):
    ids = [fresh_id(), f"s-{fresh_id()}", fresh_id(), f"s-{fresh_id()}"]
    sums = {i: 0.0 for i in ids}
    for step in range(6):
        for k, sid in enumerate(ids):
            v = float(step * 10 + k)
            r = client.infer("summator", [summator_input(v)], sequence_id=sid,
                             sequence_start=(step == 0), sequence_end=(step == 5))
            sums[sid] += v
            assert out_sum(r) == sums[sid]


def test_start_and_end_together_is_a_one_step_sequence(client):
    for sid in (fresh_id(), f"one-{fresh_id()}"):
        r = client.infer("summator", [summator_input(4.0)], sequence_id=sid,
                         sequence_start=True, sequence_end=True)
        assert out_sum(r) == 4.0
        e = infer_error(lambda: client.infer("summator", [summator_input(1.0)], sequence_id=sid))
        assert e.message() == MSG_MISSING


def test_uint64_param_ids_and_server_assigned_id(raw):
    big = 2**63 + fresh_id()
    r = raw.ModelInfer(raw_request(1.0, sequence_id__uint64_param=big, sequence_start__bool_param=True))
    assert r.parameters["sequence_id"].WhichOneof("parameter_choice") == "uint64_param"
    assert r.parameters["sequence_id"].uint64_param == big
    r = raw.ModelInfer(raw_request(2.0, sequence_id__uint64_param=big, sequence_end__bool_param=True))
    assert np.frombuffer(r.raw_output_contents[0], dtype=np.float32)[0] == 3.0
    # Start without an id: the server picks one and answers it as a uint64 parameter.
    r = raw.ModelInfer(raw_request(5.0, sequence_start__bool_param=True))
    assigned = r.parameters["sequence_id"].uint64_param
    assert assigned != 0
    r = raw.ModelInfer(raw_request(1.0, sequence_id__int64_param=assigned))
    assert r.parameters["sequence_id"].int64_param == assigned
    r = raw.ModelInfer(raw_request(1.0, sequence_id__uint64_param=assigned, sequence_end__bool_param=True))
    assert np.frombuffer(r.raw_output_contents[0], dtype=np.float32)[0] == 7.0
    # An empty string id on a start is "not given" as well.
    r = raw.ModelInfer(raw_request(1.0, sequence_id__string_param="", sequence_start__bool_param=True))
    assert r.parameters["sequence_id"].uint64_param != 0


def test_triton_errors(client, raw):
    def code_msg(req):
        with pytest.raises(grpc.RpcError) as e:
            raw.ModelInfer(req)
        return e.value.code(), e.value.details()

    # No id on a non-start step (tritonclient sends no parameters for id 0, so this falls back
    # to the special-input convention, which gives the same error).
    e = infer_error(lambda: client.infer("summator", [summator_input(1.0)], sequence_end=True))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and e.message() == MSG_ID_NOT_PROVIDED
    assert code_msg(raw_request(1.0, sequence_end__bool_param=True)) == (grpc.StatusCode.INVALID_ARGUMENT, MSG_ID_NOT_PROVIDED)
    assert code_msg(raw_request(1.0, sequence_id__string_param="")) == (grpc.StatusCode.INVALID_ARGUMENT, MSG_ID_NOT_PROVIDED)
    # Unknown id.
    e = infer_error(lambda: client.infer("summator", [summator_input(1.0)], sequence_id=fresh_id()))
    assert e.status() == "StatusCode.NOT_FOUND" and e.message() == MSG_MISSING
    e = infer_error(lambda: client.infer("summator", [summator_input(1.0)], sequence_id="nobody", sequence_end=True))
    assert e.status() == "StatusCode.NOT_FOUND" and e.message() == MSG_MISSING
    # Starting an existing id.
    sid = fresh_id()
    client.infer("summator", [summator_input(1.0)], sequence_id=sid, sequence_start=True)
    e = infer_error(lambda: client.infer("summator", [summator_input(1.0)], sequence_id=sid, sequence_start=True))
    assert e.status() == "StatusCode.ALREADY_EXISTS" and e.message() == MSG_EXISTS
    client.infer("summator", [summator_input(1.0)], sequence_id=sid, sequence_end=True)
    # Malformed parameters.
    code, msg = code_msg(raw_request(1.0, sequence_id__int64_param=-3, sequence_start__bool_param=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("Invalid sequence parameters - sequence_id must not be negative")
    code, msg = code_msg(raw_request(1.0, sequence_id__double_param=1.0, sequence_start__bool_param=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "int64, uint64 or string" in msg
    code, msg = code_msg(raw_request(1.0, sequence_id__int64_param=5, sequence_start__int64_param=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sequence_start must be a bool" in msg
    # Both conventions at once.
    e = infer_error(lambda: client.infer("summator", [summator_input(1.0), *special_inputs(fresh_id(), 1)],
                                         sequence_id=fresh_id(), sequence_start=True))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert e.message().startswith("Invalid sequence parameters - the request has both")
    # A stateless model takes no sequence parameters.
    b = tc.InferInput("b", [1, 10], "FP32")
    b.set_data_from_numpy(np.ones((1, 10), dtype=np.float32))
    e = infer_error(lambda: client.infer("dummy", [b], sequence_id=fresh_id(), sequence_start=True))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "stateless" in e.message()
    # ... and answers without any sequence id when given none.
    r = client.infer("dummy", [b])
    assert r.as_numpy("a").shape == (1, 10)
    assert "sequence_id" not in r.get_response().parameters
    # Unrelated parameters (Triton's priority/timeout) are accepted and ignored.
    r = client.infer("summator", [summator_input(1.0)], sequence_id=fresh_id(), sequence_start=True,
                     sequence_end=True, priority=1, timeout=1000)
    assert out_sum(r) == 1.0


# ---------------------------------------------------------------------------------------------
# OVMS's special inputs over KServe
# ---------------------------------------------------------------------------------------------


def test_special_inputs_raw(client):
    sid = fresh_id()
    total = 0.0
    for i, (v, control) in enumerate([(1.0, 1), (2.0, None), (3.0, 0), (4.0, 2)]):
        r = client.infer("summator", [summator_input(v), *special_inputs(sid, control)])
        total += v
        assert out_sum(r) == total
        out = r.as_numpy("sequence_id")
        assert out.dtype == np.uint64 and out.shape == (1,) and int(out[0]) == sid
        assert "sequence_id" not in r.get_response().parameters
    e = infer_error(lambda: client.infer("summator", [summator_input(1.0), *special_inputs(sid)]))
    assert e.status() == "StatusCode.NOT_FOUND" and e.message() == MSG_MISSING


def test_special_inputs_typed_contents_and_assigned_id(raw):
    req = raw_request(2.0)
    c = req.inputs.add(name="sequence_control_input", datatype="UINT32", shape=[1])
    c.contents.uint_contents.append(1)
    r = raw.ModelInfer(req)
    names = [o.name for o in r.outputs]
    assert names == ["add_sum", "sequence_id"]
    assert (r.outputs[1].datatype, list(r.outputs[1].shape)) == ("UINT64", [1])
    assigned = int(np.frombuffer(r.raw_output_contents[1], dtype=np.uint64)[0])
    assert assigned != 0
    req = raw_request(3.0)
    t = req.inputs.add(name="sequence_id", datatype="UINT64", shape=[1])
    t.contents.uint64_contents.append(assigned)
    c = req.inputs.add(name="sequence_control_input", datatype="UINT32", shape=[1])
    c.contents.uint_contents.append(2)
    r = raw.ModelInfer(req)
    assert np.frombuffer(r.raw_output_contents[0], dtype=np.float32)[0] == 5.0


def test_special_input_errors(client, raw):
    def err(*extra, value=1.0):
        return infer_error(lambda: client.infer("summator", [summator_input(value), *extra]))

    # Neither convention: OVMS's rule.
    e = err()
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and e.message() == MSG_ID_NOT_PROVIDED
    e = err(*special_inputs(control=2))
    assert e.message() == MSG_ID_NOT_PROVIDED
    e = err(*special_inputs(control=99))
    assert e.message() == MSG_BAD_CONTROL
    # Wrong datatype of the id.
    bad = tc.InferInput("sequence_id", [1], "INT64")
    bad.set_data_from_numpy(np.array([5], dtype=np.int64))
    e = err(bad)
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert e.message() == f"{MSG_ID_BAD_TYPE} - Expected datatype: UINT64; Actual: INT64; input name: sequence_id"
    # Wrong shape.
    bad = tc.InferInput("sequence_id", [1, 1], "UINT64")
    bad.set_data_from_numpy(np.array([[5]], dtype=np.uint64))
    assert err(bad).message() == "Invalid number of shape dimensions - Required shape for sequence_id is: (1)"
    bad = tc.InferInput("sequence_control_input", [2], "UINT32")
    bad.set_data_from_numpy(np.array([1, 1], dtype=np.uint32))
    assert err(bad).message() == "Invalid input shape - Required shape for sequence_control_input is: (1)"
    # A value in the wrong contents field.
    req = raw_request(1.0)
    t = req.inputs.add(name="sequence_id", datatype="UINT64", shape=[1])
    t.contents.int64_contents.append(5)
    with pytest.raises(grpc.RpcError) as ex:
        raw.ModelInfer(req)
    assert ex.value.details() == MSG_ID_BAD_TYPE
    # An extra input.
    extra = tc.InferInput("other", [1], "UINT64")
    extra.set_data_from_numpy(np.array([5], dtype=np.uint64))
    e = err(*special_inputs(fresh_id(), 1), extra)
    assert e.message() == "Invalid number of inputs - Expected: 3; Actual: 4"


def test_model_input_errors(client):
    e = infer_error(lambda: client.infer("summator", [summator_input(1.0, "FP64")], sequence_id=fresh_id(), sequence_start=True))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert e.message() == "Invalid input precision - Expected: FP32; Actual: FP64; input name: input"
    i = tc.InferInput("input", [1, 2], "FP32")
    i.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
    e = infer_error(lambda: client.infer("summator", [i], sequence_id=fresh_id(), sequence_start=True))
    assert e.message() == "Invalid input shape - Expected: (1,1); Actual: (1,2); input name: input"
    i = tc.InferInput("wrong", [1, 1], "FP32")
    i.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    e = infer_error(lambda: client.infer("summator", [i], sequence_id=fresh_id(), sequence_start=True))
    assert e.message() == "Missing input with specific name - Required input: input"


# ---------------------------------------------------------------------------------------------
# ModelStreamInfer
# ---------------------------------------------------------------------------------------------


class StreamCollector:
    def __init__(self):
        self.q = queue.Queue()

    def __call__(self, result, error):
        self.q.put((result, error))

    def get(self, timeout=30.0):
        return self.q.get(timeout=timeout)


def test_stream_long_sequence_with_a_bad_step(srv):
    steps = 1_200
    bad = {300, 301, 777}
    for sid in (fresh_id(), f"stream-{fresh_id()}"):
        c = tc.InferenceServerClient(url=srv.addr)
        got = StreamCollector()
        c.start_stream(callback=got)
        try:
            for i in range(steps):
                datatype = "FP64" if i in bad else "FP32"
                c.async_stream_infer("summator", [summator_input(float(i % 7), datatype)], request_id=str(i),
                                     sequence_id=sid, sequence_start=(i == 0), sequence_end=(i == steps - 1))
            total = 0.0
            for i in range(steps):
                result, error = got.get()
                if i in bad:
                    assert result is None
                    assert "Invalid input precision - Expected: FP32; Actual: FP64" in str(error), i
                    continue
                assert error is None, (i, error)
                total += float(i % 7)
                resp = result.get_response()
                assert resp.id == str(i)  # answers come in request order
                assert out_sum(result) == total, i
                assert param(resp, "sequence_id") == sid
        finally:
            c.stop_stream()
            c.close()
        # The END step ended the sequence.
        c = tc.InferenceServerClient(url=srv.addr)
        e = infer_error(lambda: c.infer("summator", [summator_input(1.0)], sequence_id=sid))
        assert e.message() == MSG_MISSING
        c.close()


def test_stream_errors_do_not_end_the_stream(srv):
    c = tc.InferenceServerClient(url=srv.addr)
    got = StreamCollector()
    c.start_stream(callback=got)
    try:
        sid = fresh_id()
        c.async_stream_infer("nope", [summator_input(1.0)], request_id="a")
        c.async_stream_infer("summator", [summator_input(1.0)], request_id="b", sequence_id=fresh_id())
        c.async_stream_infer("summator", [summator_input(1.0)], request_id="c", sequence_end=True)
        c.async_stream_infer("summator", [summator_input(2.0), *special_inputs(sid, 1)], request_id="d")
        c.async_stream_infer("summator", [summator_input(3.0), *special_inputs(sid, 2)], request_id="e")
        assert str(got.get()[1]).endswith(MSG_NO_MODEL)
        assert str(got.get()[1]).endswith(MSG_MISSING)
        assert str(got.get()[1]).endswith(MSG_ID_NOT_PROVIDED)
        r, e = got.get()
        assert e is None and out_sum(r) == 2.0 and int(r.as_numpy("sequence_id")[0]) == sid
        r, e = got.get()
        assert e is None and out_sum(r) == 5.0
    finally:
        c.stop_stream()
        c.close()


def test_stream_unary_calls_alongside(srv, client):
    """Unary calls on other connections and a stream interleave freely."""
    c = tc.InferenceServerClient(url=srv.addr)
    got = StreamCollector()
    c.start_stream(callback=got)
    try:
        s1, s2 = fresh_id(), fresh_id()
        for k in range(50):
            c.async_stream_infer("summator", [summator_input(1.0)], sequence_id=s1, sequence_start=(k == 0))
            r = client.infer("summator", [summator_input(2.0)], sequence_id=s2, sequence_start=(k == 0))
            assert out_sum(r) == 2.0 * (k + 1)
        for k in range(50):
            r, e = got.get()
            assert e is None and out_sum(r) == k + 1
    finally:
        c.stop_stream()
        c.close()


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_metrics_count_kserve_grpc_requests(seqcore_bin, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    from rest_helpers import curl, start_rest_server

    s = start_rest_server(tmp_path, label="seqcore-kserve-metrics")
    try:
        c = tc.InferenceServerClient(url=s.addr)
        sid = fresh_id()
        c.infer("summator", [summator_input(1.0)], sequence_id=sid, sequence_start=True)
        c.infer("summator", [summator_input(1.0)], sequence_id=sid, sequence_end=True)
        infer_error(lambda: c.infer("summator", [summator_input(1.0)], sequence_id=sid))
        # Two stream steps: one success, one failure.
        got = StreamCollector()
        c.start_stream(callback=got)
        c.async_stream_infer("summator", [summator_input(1.0)], sequence_id=sid, sequence_start=True, sequence_end=True)
        c.async_stream_infer("summator", [summator_input(1.0)], sequence_id=sid)
        assert got.get()[1] is None and got.get()[1] is not None
        c.stop_stream()
        assert c.is_model_ready("summator")
        c.get_model_metadata("summator")
        c.get_model_metadata("summator")
        c.close()

        samples = {}
        for family in text_string_to_metric_families(curl(s.base + "/metrics")[2]):
            for smp in family.samples:
                samples[(smp.name, frozenset(smp.labels.items()))] = smp.value

        def count(kind, method):
            labels = frozenset({"api": "KServe", "interface": "gRPC", "method": method, "name": "summator",
                                "version": "1"}.items())
            for name in (f"ovms_requests_{kind}_total", f"ovms_requests_{kind}"):
                if (name, labels) in samples:
                    return samples[(name, labels)]
            raise KeyError((kind, method))

        assert count("success", "ModelInfer") == 3
        assert count("fail", "ModelInfer") == 2
        assert count("success", "ModelReady") == 1
        assert count("success", "ModelMetadata") == 2
    finally:
        s.stop()
