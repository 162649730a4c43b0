"""Hostile and malformed input, table-driven (issue 12, part 3): each case gets its status and
message (or its connection closed) within bounded memory and time, and a reference sequence
stepped on its own connection between every case is never disturbed.

One server (1 shard, --grpc_max_message_bytes 1 MiB, REST on); gRPC cases as raw bytes through
grpcio's generic calls, REST cases through http.client and raw sockets, HTTP/2 abuse through raw
sockets (rapid reset, too many streams, SETTINGS / WINDOW_UPDATE / CONTINUATION floods, a client
that never reads, metadata that is not UTF-8 or not a valid header), the same payloads over KServe
gRPC unary and on one ModelStreamInfer stream, and connection floods past the per-shard limit and
past the process's descriptor limit.
"""

from __future__ import annotations

import http.client
import socket
import struct
import time

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from conftest import START, model_dir, predict_ok, summator_out, summator_request, write_config
from rest_helpers import RestServer

MESSAGE_MAX = 1 << 20
MODELS = [{"name": "summator", "base_path": str(model_dir("summator")), "stateful": True}]
PREDICT = "/tensorflow.serving.PredictionService/Predict"
RSS_GROWTH_MAX_MIB = 64


class Reference:
    """A summator sequence on its own connection; `check` steps it and verifies the sum."""

    def __init__(self, srv: RestServer, seq_id: int = 4242):
        from tensorflow_serving.apis import prediction_service_pb2_grpc
        self.seq_id = seq_id
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(srv.new_channel())
        self.sum = summator_out(predict_ok(self.stub, summator_request(1.0, seq_id=seq_id, control=START)))

    def check(self, after: str) -> None:
        got = summator_out(predict_ok(self.stub, summator_request(1.0, seq_id=self.seq_id)))
        assert got == self.sum + 1.0, f"the reference sequence was disturbed by {after}: {got} != {self.sum + 1}"
        self.sum = got


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    srv = RestServer(["--config_path", str(write_config(MODELS, d)), "--cores", "1",
                      "--grpc_max_message_bytes", str(MESSAGE_MAX), "--rest_request_timeout_seconds", "2"], d,
                     label="seqcore-hostile")
    ref = Reference(srv)
    yield srv, ref
    srv.stop()


def rss_mib(srv) -> float:
    for line in open(f"/proc/{srv.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tensor(values, dtype=types_pb2.DT_FLOAT, dims=(1, 1), content: bytes | None = None):
    t = tensor_pb2.TensorProto(dtype=dtype)
    t.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                                    for d in dims]))
    if content is not None:
        t.tensor_content = content
    elif dtype == types_pb2.DT_FLOAT:
        t.float_val.extend(values)
    elif dtype == types_pb2.DT_DOUBLE:
        t.double_val.extend(values)
    return t


def predict_bytes(**inputs) -> bytes:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = "summator"
    for k, v in inputs.items():
        r.inputs[k].CopyFrom(v)
    return r.SerializeToString()


def seq(control=START, seq_id=99):
    return {"sequence_id": tensor([], types_pb2.DT_UINT64, (1,), struct.pack("<Q", seq_id)),
            "sequence_control_input": tensor([], types_pb2.DT_UINT32, (1,), struct.pack("<I", control))}


def with_name(raw_name: bytes) -> bytes:
    """A PredictRequest whose model name is these bytes (possibly invalid UTF-8)."""
    spec = b"\x0a" + bytes([len(raw_name)]) + raw_name
    return b"\x0a" + bytes([len(spec)]) + spec


GRPC_CASES = [
    ("truncated protobuf", predict_bytes(input=tensor([1.0]), **seq())[:-3],
     grpc.StatusCode.INVALID_ARGUMENT, "Invalid message structure"),
    ("invalid UTF-8 model name", with_name(b"sum\xffmator"), grpc.StatusCode.INVALID_ARGUMENT,
     "Invalid message structure"),
    ("unknown model", with_name(b"nosuch"), grpc.StatusCode.NOT_FOUND, "Model with requested name is not found"),
    ("wrong dtype", predict_bytes(input=tensor([1.0], types_pb2.DT_DOUBLE), **seq()),
     grpc.StatusCode.INVALID_ARGUMENT, "Invalid input precision"),
    ("wrong shape", predict_bytes(input=tensor([1.0, 2.0], dims=(1, 2)), **seq()),
     grpc.StatusCode.INVALID_ARGUMENT, "Invalid input shape"),
    ("huge declared shape, tiny body", predict_bytes(input=tensor([], dims=(1, 1 << 40), content=b"\0" * 4), **seq()),
     grpc.StatusCode.INVALID_ARGUMENT, "Invalid input shape"),
    ("tensor_content of the wrong length", predict_bytes(input=tensor([], content=b"\0" * 7), **seq()),
     grpc.StatusCode.INVALID_ARGUMENT, "Invalid content size"),
    ("no special inputs", predict_bytes(input=tensor([1.0])), grpc.StatusCode.INVALID_ARGUMENT,
     "Sequence ID has not been provided"),
    ("a step for an unknown sequence", predict_bytes(input=tensor([1.0]), **seq(0, 31337)),
     grpc.StatusCode.NOT_FOUND, "Sequence with provided ID does not exist"),
    ("a message over --grpc_max_message_bytes", predict_bytes(input=tensor([], content=b"\0" * (MESSAGE_MAX + 10)),
                                                              **seq()),
     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ("an empty message", b"", grpc.StatusCode.NOT_FOUND, "Model with requested name is not found"),
]


@pytest.mark.parametrize("name,payload,code,message", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc_hostile_payloads(env, name, payload, code, message):
    srv, ref = env
    call = srv.channel.unary_unary(PREDICT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    before = rss_mib(srv)
    with pytest.raises(grpc.RpcError) as e:
        call(payload, timeout=20)
    assert e.value.code() == code and message in (e.value.details() or ""), (e.value.code(), e.value.details())
    ref.check(name)
    assert rss_mib(srv) - before < RSS_GROWTH_MAX_MIB


def test_nan_and_inf_are_values_of_their_own_sequence_only(env):
    srv, ref = env
    nan = summator_out(predict_ok(srv.stub, summator_request(float("nan"), seq_id=77, control=START)))
    assert np.isnan(nan)
    inf = summator_out(predict_ok(srv.stub, summator_request(float("inf"), seq_id=78, control=START)))
    assert inf == float("inf")
    ref.check("NaN and Inf inputs")


def rest(srv, method: str, path: str, body: bytes = b"", headers=None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", srv.rest_port, timeout=20)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    out = (r.status, r.read())
    c.close()
    return out


REST_CASES = [
    ("deep JSON", "POST", "/v1/models/summator:predict", b"[" * 100_000 + b"]" * 100_000, {}, 400, b"not valid json"),
    ("deep JSON within the body limit", "POST", "/v1/models/summator:predict", b'{"inputs":' + b"[" * 5000 +
     b"]" * 5000 + b"}", {}, 400, b"not valid json"),
    ("malformed JSON", "POST", "/v1/models/summator:predict", b'{"inputs": {', {}, 400, b"not valid json"),
    ("JSON not an object", "POST", "/v1/models/summator:predict", b"[1,2]", {}, 400, b"JSON object"),
    ("KServe binary data with a lying size", "POST", "/v2/models/summator/infer",
     b'{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","parameters":{"binary_data_size":400}}],'
     b'"parameters":{"sequence_id":5,"sequence_start":true}}' + b"\0" * 4,
     {"Inference-Header-Content-Length": "138"}, 400, b""),
    ("invalid UTF-8 in the model name", "GET", "/v1/models/sum%FFmator", b"", {}, 404, b""),
    ("unknown model", "GET", "/v2/models/nosuch", b"", {}, 404, b"not found"),
    ("unknown route", "GET", "/v3/whatever", b"", {}, 404, b"Invalid request URL"),
]


@pytest.mark.parametrize("name,method,path,body,headers,status,needle", REST_CASES, ids=[c[0] for c in REST_CASES])
def test_rest_hostile_requests(env, name, method, path, body, headers, status, needle):
    srv, ref = env
    before = rss_mib(srv)
    code, out = rest(srv, method, path, body, headers)
    assert code == status and needle in out, (code, out[:300])
    ref.check(name)
    assert rss_mib(srv) - before < RSS_GROWTH_MAX_MIB


# ---- HTTP/2 abuse over raw sockets ----

def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_connect(srv) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
    return s


HEADER_BLOCK = (bytes([0x83, 0x86, 0x04, len(PREDICT)]) + PREDICT.encode() + bytes([0x01, 9]) + b"127.0.0.1"
                + bytes([0x0f, 0x10, 16]) + b"application/grpc")


def drain(s: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sends within `seconds`, and whether it closed the connection."""
    s.settimeout(0.05)
    buf, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 16)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return buf, True
        if not chunk:
            return buf, True
        buf += chunk
    return buf, False


def goaway_code(buf: bytes):
    at = 0
    while at + 9 <= len(buf):
        n = int.from_bytes(buf[at:at + 3], "big")
        if buf[at + 3] == 7 and at + 17 <= len(buf):
            return int.from_bytes(buf[at + 13:at + 17], "big")
        at += 9 + n
    return None


def test_rapid_reset_flood_is_closed_with_enhance_your_calm(env):
    srv, ref = env
    s = h2_connect(srv)
    burst = b"".join(frame(1, 5, sid, HEADER_BLOCK) + frame(3, 0, sid, struct.pack(">I", 8))
                     for sid in range(1, 2 * 2000, 2))
    try:
        s.sendall(burst)
    except (BrokenPipeError, ConnectionResetError):
        pass
    buf, _ = drain(s, 1.0)
    s.close()
    assert goaway_code(buf) == 11, f"expected GOAWAY ENHANCE_YOUR_CALM, got {goaway_code(buf)}"
    ref.check("a rapid-reset flood")


def test_too_many_streams_are_refused_one_by_one(env):
    srv, ref = env
    s = h2_connect(srv)
    # 200 calls opened (headers only, no body): past SETTINGS_MAX_CONCURRENT_STREAMS (128) each
    # extra stream is refused (RST_STREAM REFUSED_STREAM, 7); the connection stays.
    s.sendall(b"".join(frame(1, 4, sid, HEADER_BLOCK) for sid in range(1, 401, 2)))
    buf, closed = drain(s, 1.0)
    refused, at = 0, 0
    while at + 9 <= len(buf):
        n = int.from_bytes(buf[at:at + 3], "big")
        if buf[at + 3] == 3 and int.from_bytes(buf[at + 9:at + 13], "big") == 7:
            refused += 1
        at += 9 + n
    s.close()
    assert not closed and refused == 200 - 128, (closed, refused)
    ref.check("too many streams")


@pytest.mark.parametrize("flood", ["settings", "window_update", "ping"])
def test_control_frame_floods_stay_bounded(env, flood):
    srv, ref = env
    before = rss_mib(srv)
    s = h2_connect(srv)
    one = {"settings": frame(4, 0, 0, struct.pack(">HI", 3, 100)),
           "window_update": frame(8, 0, 0, struct.pack(">I", 1)),
           "ping": frame(6, 0, 0, b"\0" * 8)}[flood]
    t0 = time.monotonic()
    try:
        for _ in range(50):
            s.sendall(one * 2000)  # 100 000 frames, never reading the acks
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    s.close()
    assert time.monotonic() - t0 < 30
    ref.check(f"a {flood} flood")
    assert rss_mib(srv) - before < RSS_GROWTH_MAX_MIB


def test_a_continuation_flood_is_cut_at_the_header_limit(env):
    srv, ref = env
    before = rss_mib(srv)
    s = h2_connect(srv)
    # HEADERS without END_HEADERS, then CONTINUATION frames of a never-ending header value.
    start = bytes([0x40, 5]) + b"x-big" + bytes([0x7f, 0x80, 0x80, 0x04])  # a 64 KiB literal value
    payload = frame(1, 0, 1, HEADER_BLOCK + start)
    try:
        s.sendall(payload)
        for _ in range(1000):
            s.sendall(frame(9, 0, 1, b"a" * 1024))
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    buf, closed = drain(s, 1.0)
    s.close()
    assert closed or goaway_code(buf) is not None, "the server kept reading an endless header block"
    ref.check("a CONTINUATION flood")
    assert rss_mib(srv) - before < RSS_GROWTH_MAX_MIB


def test_a_client_that_never_reads_stops_only_itself(env):
    srv, ref = env
    before = rss_mib(srv)
    s = h2_connect(srv)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = predict_bytes(input=tensor([1.0]), **seq(START, 0))
    message = b"\0" + struct.pack(">I", len(body)) + body
    try:
        for k in range(20):
            s.sendall(b"".join(frame(1, 4, sid, HEADER_BLOCK) + frame(0, 1, sid, message)
                               for sid in range(1 + 256 * k, 1 + 256 * k + 256, 2)))
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    ref.check("a client that never reads")
    assert rss_mib(srv) - before < RSS_GROWTH_MAX_MIB
    s.close()


def test_a_slow_rest_client_is_cut_off(env):
    """Slowloris: a byte every 50 ms is never idle, but the request must arrive whole within
    --rest_request_timeout_seconds (2 here): 408, then closed."""
    srv, ref = env
    s = socket.create_connection(("127.0.0.1", srv.rest_port), timeout=5)
    t0 = time.monotonic()
    got = b""
    s.settimeout(0.001)
    try:
        for b in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400:
            s.sendall(bytes([b]))
            time.sleep(0.05)
            try:
                got += s.recv(4096)
            except socket.timeout:
                pass
            if got or time.monotonic() - t0 > 10:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    assert got.startswith(b"HTTP/1.1 408 Request Timeout"), got[:200]
    assert 1.5 < time.monotonic() - t0 < 5
    ref.check("a slow REST client")


def test_connections_past_the_per_shard_limit_are_closed_and_the_others_served(tmp_path):
    srv = RestServer(["--config_path", str(write_config(MODELS, tmp_path)), "--cores", "1",
                      "--grpc_max_connections", "4", "--rest_max_connections", "4"], tmp_path, label="seqcore-flood")
    try:
        ref = Reference(srv)  # with the server's own channel: 2 of the 4 gRPC connections
        extra = []
        for _ in range(10):
            s = h2_connect(srv)
            extra.append(s)
        closed = [drain(s, 0.3)[1] for s in extra]
        assert closed.count(False) == 2 and closed.count(True) == 8, closed
        rest_socks = [socket.create_connection(("127.0.0.1", srv.rest_port), timeout=5) for _ in range(6)]
        for s in rest_socks:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = [drain(s, 0.3)[0].startswith(b"HTTP/1.1 200") for s in rest_socks]
        assert answered.count(True) == 4, answered
        ref.check("a connection flood")
        # Each listener said why it closed them, once (throttled to one warning per 10 s).
        log = srv.stderr_text()
        for what in ("gRPC", "REST"):
            warning = f"{what} listener closed a new connection: 4 are open on this shard, its limit"
            assert log.count(warning) == 1, log[-3000:]
        for s in extra + rest_socks:
            s.close()
        time.sleep(0.3)
        again = h2_connect(srv)
        assert not drain(again, 0.3)[1], "a connection after the flood is served"
        again.close()
    finally:
        srv.stop()


# ---- gRPC metadata that is not UTF-8, or not a valid header at all ----

def literal_header(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name (lengths < 127)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def h2_frames(buf: bytes) -> list[tuple[int, int, bytes]]:
    """(type, stream, payload) of every whole frame in `buf`."""
    out, at = [], 0
    while at + 9 <= len(buf):
        n = int.from_bytes(buf[at:at + 3], "big")
        out.append((buf[at + 3], int.from_bytes(buf[at + 5:at + 9], "big") & 0x7FFF_FFFF, buf[at + 9:at + 9 + n]))
        at += 9 + n
    return out


# Header values are octets in HTTP/2, so a value that is not UTF-8 is ignored metadata and the
# call is served; a NUL in a value, or a name with an upper-case letter or a non-token byte, makes
# the request malformed, and h2 closes that connection with GOAWAY PROTOCOL_ERROR (1).
METADATA_CASES = [
    ("a value that is not UTF-8", literal_header(b"x-meta", b"\xff\xfe"), "served"),
    ("grpc-timeout that is not a timeout", literal_header(b"grpc-timeout", b"\xff\xffS"), "served"),
    ("a -bin value that is not base64", literal_header(b"x-meta-bin", b"!!not base64"), "served"),
    ("a NUL in a value", literal_header(b"x-meta", b"a\x00b"), "goaway"),
    ("a name byte that is not a token", literal_header(b"x-m\xffta", b"v"), "goaway"),
    ("an upper-case name", literal_header(b"X-Meta", b"v"), "goaway"),
]


@pytest.mark.parametrize("name,header,outcome", METADATA_CASES, ids=[c[0] for c in METADATA_CASES])
def test_grpc_metadata_hostile(env, name, header, outcome):
    srv, ref = env
    sid = 5000 + METADATA_CASES.index(next(c for c in METADATA_CASES if c[0] == name))
    body = summator_request(2.0, seq_id=sid, control=START).SerializeToString()
    s = h2_connect(srv)
    s.sendall(frame(1, 4, 1, HEADER_BLOCK + header) + frame(0, 1, 1, b"\0" + struct.pack(">I", len(body)) + body))
    buf, _ = drain(s, 0.5)
    s.close()
    frames = h2_frames(buf)
    if outcome == "served":
        data = [p for k, sid_, p in frames if k == 0 and sid_ == 1]
        assert data, f"no answer to the call: {frames}"
        out = predict_pb2.PredictResponse.FromString(b"".join(data)[5:])
        assert np.frombuffer(out.outputs["add_sum"].tensor_content, np.float32).tolist() == [2.0]
    else:
        assert goaway_code(buf) == 1, f"expected GOAWAY PROTOCOL_ERROR, got {frames}"
        assert not [f for f in frames if f[0] == 0], "a malformed request was answered"
    ref.check(name)


# ---- The same hostile payloads over KServe gRPC, unary and streaming ----

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def infer_bytes(name: str = "summator", shape=(1, 1), datatype: str = "FP32", raw: bytes | None = None,
                seq_id: int = 99, start: bool = True, raw_name: bytes | None = None, extra_raw: int = 0) -> bytes:
    from tritonclient.grpc import service_pb2
    r = service_pb2.ModelInferRequest(model_name=name)
    r.inputs.add(name="input", datatype=datatype, shape=list(shape))
    r.raw_input_contents.append(raw if raw is not None else np.zeros((1, 1), np.float32).tobytes())
    for _ in range(extra_raw):
        r.raw_input_contents.append(b"\0" * 4)
    r.parameters["sequence_id"].int64_param = seq_id
    r.parameters["sequence_start"].bool_param = start
    b = r.SerializeToString()
    if raw_name is not None:  # field 1 (model_name) comes first: swap in bytes protobuf would refuse
        assert b[0] == 0x0A and b[1] == len(name)
        b = b"\x0a" + bytes([len(raw_name)]) + raw_name + b[2 + len(name):]
    return b


KSERVE_CASES = [
    ("truncated protobuf", infer_bytes()[:-3], grpc.StatusCode.INVALID_ARGUMENT, "Invalid message structure"),
    ("invalid UTF-8 model name", infer_bytes(raw_name=b"sum\xffmator"), grpc.StatusCode.INVALID_ARGUMENT,
     "not UTF-8"),
    ("unknown model", infer_bytes(name="nosuch"), grpc.StatusCode.NOT_FOUND, "Model with requested name is not found"),
    ("wrong datatype", infer_bytes(datatype="FP64", raw=b"\0" * 8), grpc.StatusCode.INVALID_ARGUMENT,
     "Invalid input precision - Expected: FP32; Actual: FP64"),
    ("a datatype that is no datatype", infer_bytes(datatype="BYTES", raw=b"\x01\0\0\0a"),
     grpc.StatusCode.INVALID_ARGUMENT, "Invalid input precision"),
    ("raw_input_contents of the wrong length", infer_bytes(raw=b"\0" * 7), grpc.StatusCode.INVALID_ARGUMENT,
     "Invalid content size of tensor proto - Expected: 4 bytes; Actual: 7 bytes"),
    ("huge declared shape, tiny body", infer_bytes(shape=(1, 1 << 40), raw=b"\0" * 4),
     grpc.StatusCode.INVALID_ARGUMENT, "Invalid input shape - Expected: (1,1); Actual: (1,1099511627776)"),
    ("a negative dimension", infer_bytes(shape=(1, -5)), grpc.StatusCode.INVALID_ARGUMENT,
     "Invalid input shape - Expected: (1,1); Actual: (1,-5)"),
    ("more raw contents than inputs", infer_bytes(extra_raw=1), grpc.StatusCode.INVALID_ARGUMENT,
     "raw_input_contents has 2 entries for 1 inputs"),
    ("a step for an unknown sequence", infer_bytes(seq_id=31337, start=False), grpc.StatusCode.NOT_FOUND,
     "Sequence with provided ID does not exist"),
    ("an empty message", b"", grpc.StatusCode.NOT_FOUND, "Model with requested name is not found"),
]


@pytest.mark.parametrize("name,payload,code,message", KSERVE_CASES, ids=[c[0] for c in KSERVE_CASES])
def test_kserve_grpc_hostile_payloads(env, name, payload, code, message):
    srv, ref = env
    call = srv.channel.unary_unary(MODEL_INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        call(payload, timeout=20)
    assert e.value.code() == code and message in (e.value.details() or ""), (e.value.code(), e.value.details())
    ref.check(name)


def test_kserve_stream_answers_each_hostile_message_and_goes_on(env):
    """On one ModelStreamInfer stream every hostile message gets its own error_message, in order,
    and a sequence started after them on the same stream steps correctly."""
    from tritonclient.grpc import service_pb2
    srv, ref = env
    stream = srv.channel.stream_stream(MODEL_STREAM_INFER, request_serializer=lambda b: b,
                                       response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
    good = np.array([[3.0]], np.float32).tobytes()
    msgs = [c[1] for c in KSERVE_CASES] + [infer_bytes(seq_id=6001, raw=good),
                                            infer_bytes(seq_id=6001, raw=good, start=False)]
    answers = list(stream(iter(msgs), timeout=20))
    assert len(answers) == len(msgs)
    for (name, _, _, message), a in zip(KSERVE_CASES, answers):
        assert message in a.error_message, (name, a.error_message)
    for a, want in zip(answers[-2:], (3.0, 6.0)):
        assert a.error_message == "", a.error_message
        out = next(i for i, o in enumerate(a.infer_response.outputs) if o.name == "add_sum")
        assert np.frombuffer(a.infer_response.raw_output_contents[out], np.float32).tolist() == [want]
    ref.check("hostile messages on a KServe stream")


def test_an_oversized_message_ends_only_its_own_stream(env):
    from tritonclient.grpc import service_pb2
    srv, ref = env
    stream = srv.channel.stream_stream(MODEL_STREAM_INFER, request_serializer=lambda b: b,
                                       response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
    with pytest.raises(grpc.RpcError) as e:
        list(stream(iter([infer_bytes(seq_id=6002), infer_bytes(raw=b"\0" * (MESSAGE_MAX + 10), seq_id=6003)]),
                    timeout=20))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.value.code(), e.value.details())
    ref.check("an oversized message on a KServe stream")


# ---- Out of file descriptors ----

def test_a_flood_past_the_descriptor_limit_leaves_open_connections_served(tmp_path):
    """With RLIMIT_NOFILE a few descriptors above what the server holds, a connection flood makes
    accept fail with EMFILE: the server backs off and retries, the connections it has keep being
    served, and once the flood closes a new connection is served again."""
    import os
    import resource
    srv = RestServer(["--config_path", str(write_config(MODELS, tmp_path)), "--cores", "1"], tmp_path,
                     label="seqcore-nofile")
    flood = []
    try:
        ref = Reference(srv)
        held = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
        resource.prlimit(srv.proc.pid, resource.RLIMIT_NOFILE, (held + 4, held + 4))
        for _ in range(40):
            flood.append(h2_connect(srv))
        time.sleep(0.3)
        # The kernel completes every handshake; the server can accept (and answer with its
        # SETTINGS) only as many as its free descriptors.
        served = [drain(s, 0.05)[0] != b"" for s in flood]
        assert served.count(True) <= 4, served
        ref.check("a flood past the descriptor limit")
        assert "gRPC listener cannot accept: Too many open files" in srv.stderr_text()
        assert srv.stderr_text().count("listener cannot accept") <= 2, "the warning is throttled"
        for s in flood:
            s.close()
        flood = []
        time.sleep(0.5)
        again = h2_connect(srv)
        assert not drain(again, 0.3)[1], "a connection after the flood is served"
        again.close()
        fresh = Reference(srv, seq_id=4343)  # a new client, on a new connection, starts and steps a sequence
        fresh.check("the end of the descriptor flood")
        assert srv.proc.poll() is None
    finally:
        for s in flood:
            s.close()
        srv.stop()
