"""tritonclient.http (Triton's own HTTP client) drives whole sequences over KServe v2 REST with
Triton's sequence parameters, numeric and string ids, and checks every running sum; with its
defaults it uses the binary tensor data extension (binary inputs and outputs), which the second
half of this file covers, with the 400s of malformed binary requests."""

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from rest_helpers import raw_exchange, request, split_responses, start_rest_server


@pytest.fixture(scope="module")
def server(seqcore_bin, tmp_path_factory):
    s = start_rest_server(tmp_path_factory.mktemp("kserve-http"), cores=2, label="seqcore-kserve-http")
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.rest_port}", concurrency=1)
    yield c
    c.close()


def step(client, value, **sequence):
    inp = httpclient.InferInput("input", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[value]], dtype=np.float32), binary_data=False)
    out = httpclient.InferRequestedOutput("add_sum", binary_data=False)
    result = client.infer("summator", [inp], outputs=[out], **sequence)
    return float(result.as_numpy("add_sum")[0, 0]), result.get_response()


@pytest.mark.parametrize("ids", [[101, 102, 2**63 + 5], ["utt-a", "utt-b", "7"]], ids=["uint64", "string"])
def test_interleaved_sequences_with_triton_parameters(client, ids):
    rng = np.random.default_rng(3)
    steps = 12
    values = {i: rng.integers(-50, 50, steps).astype(np.float32) for i in ids}
    sums = {i: 0.0 for i in ids}
    for k in range(steps):
        for i in ids:
            got, resp = step(client, float(values[i][k]), sequence_id=i,
                             sequence_start=(k == 0), sequence_end=(k == steps - 1))
            sums[i] += float(values[i][k])
            assert got == pytest.approx(sums[i]), (i, k)
            assert resp["parameters"]["sequence_id"] == i
    # Ended: the ids are free again, and a step on one of them is a missing sequence.
    with pytest.raises(InferenceServerException) as e:
        step(client, 1.0, sequence_id=ids[0])
    assert "Sequence with provided ID does not exist" in str(e.value)


def test_numeric_and_string_ids_are_separate_sequences(client):
    step(client, 5.0, sequence_id=77, sequence_start=True)
    step(client, 100.0, sequence_id="77", sequence_start=True)
    assert step(client, 1.0, sequence_id=77)[0] == 6.0
    assert step(client, 1.0, sequence_id="77")[0] == 101.0
    step(client, 0.0, sequence_id=77, sequence_end=True)
    step(client, 0.0, sequence_id="77", sequence_end=True)


def test_step_without_id_is_refused_with_ovms_message(client):
    with pytest.raises(InferenceServerException) as e:
        step(client, 1.0, sequence_end=True)
    assert "Sequence ID has not been provided in request inputs" in str(e.value)


# --------------------------------------------------------------------------------------------
# The binary tensor data extension: tritonclient.http's defaults (binary inputs and outputs)
# --------------------------------------------------------------------------------------------


def test_dummy_unary_with_defaults(client):
    x = np.arange(10, dtype=np.float32).reshape(1, 10) * 0.5
    inp = httpclient.InferInput("b", [1, 10], "FP32")
    inp.set_data_from_numpy(x)  # binary by default
    # No outputs named: tritonclient asks for every output as binary (binary_data_output).
    r = client.infer("dummy", [inp])
    np.testing.assert_array_equal(r.as_numpy("a"), x + 1)
    assert r.get_output("a")["parameters"] == {"binary_data_size": 40}
    assert "data" not in r.get_output("a")
    # Named with InferRequestedOutput's default (binary_data=True).
    r = client.infer("dummy", [inp], outputs=[httpclient.InferRequestedOutput("a")], request_id="u1")
    np.testing.assert_array_equal(r.as_numpy("a"), x + 1)
    assert r.get_response()["id"] == "u1"


def test_summator_sequence_with_defaults(client):
    inp = httpclient.InferInput("input", [1, 1], "FP32")
    total = 0.0
    for k, v in enumerate([1.0, 2.0, 3.5]):
        inp.set_data_from_numpy(np.array([[v]], dtype=np.float32))
        r = client.infer("summator", [inp], outputs=[httpclient.InferRequestedOutput("add_sum")],
                         sequence_id=4242, sequence_start=(k == 0), sequence_end=(k == 2))
        total += v
        assert r.as_numpy("add_sum").tolist() == [[total]]
        assert r.get_response()["parameters"]["sequence_id"] == 4242
    assert total == 6.5
    # Ended: the id is free, and a middle step on it is a missing sequence.
    with pytest.raises(InferenceServerException) as e:
        client.infer("summator", [inp], sequence_id=4242)
    assert "Sequence with provided ID does not exist" in str(e.value)


def test_special_inputs_as_binary_tensors(client):
    """OVMS's special inputs sent the tritonclient way (binary UINT64 / UINT32), mixed with a JSON
    model input; the answer's sequence_id output comes back binary (binary_data_output)."""
    def special(name, dtype, value):
        t = httpclient.InferInput(name, [1], dtype)
        t.set_data_from_numpy(np.array([value], dtype=np.uint64 if dtype == "UINT64" else np.uint32))
        return t

    sums = []
    for k, v in enumerate([10.0, -4.0, 0.25]):
        x = httpclient.InferInput("input", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[v]], dtype=np.float32), binary_data=(k != 1))
        control = [1, 0, 2][k]
        r = client.infer("summator", [x, special("sequence_id", "UINT64", 2**63 + 9),
                                      special("sequence_control_input", "UINT32", control)])
        sums.append(float(r.as_numpy("add_sum")[0, 0]))
        assert r.as_numpy("sequence_id").tolist() == [2**63 + 9]
        assert r.get_output("sequence_id")["parameters"] == {"binary_data_size": 8}
    assert sums == [10.0, 6.0, 6.25]


def test_binary_answer_on_the_wire(server):
    """The answer's framing as tritonclient reads it: Inference-Header-Content-Length gives the
    JSON's length, binary outputs follow in the order the JSON lists them."""
    x = np.arange(10, dtype=np.float32).reshape(1, 10)
    header = json.dumps({"inputs": [{"name": "b", "shape": [1, 10], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 40}}],
                         "outputs": [{"name": "a", "parameters": {"binary_data": True}}]}).encode()
    conn = server.conn()
    conn.request("POST", "/v2/models/dummy/infer", body=header + x.tobytes(),
                 headers={"Inference-Header-Content-Length": str(len(header))})
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, body
    assert r.getheader("Content-Type") == "application/octet-stream"
    n = int(r.getheader("Inference-Header-Content-Length"))
    answer = json.loads(body[:n])
    assert answer["outputs"] == [{"name": "a", "datatype": "FP32", "shape": [1, 10],
                                  "parameters": {"binary_data_size": 40}}]
    np.testing.assert_array_equal(np.frombuffer(body[n:], np.float32), (x + 1).ravel())
    # A JSON answer when no output is binary: no Inference-Header-Content-Length.
    conn.request("POST", "/v2/models/dummy/infer", body=json.dumps(
        {"inputs": [{"name": "b", "shape": [1, 10], "datatype": "FP32", "data": x.ravel().tolist()}],
         "outputs": [{"name": "a"}]}))
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Inference-Header-Content-Length") is None
    assert r.getheader("Content-Type") == "application/json"
    assert json.loads(r.read())["outputs"][0]["data"] == (x + 1).ravel().tolist()
    conn.close()


def _binary_request(header: dict, data: bytes, length=None):
    h = json.dumps(header).encode()
    return h + data, {"Inference-Header-Content-Length": str(len(h)) if length is None else length}


def _summator_header(size, **extra):
    inp = {"name": "input", "shape": [1, 1], "datatype": "FP32", "parameters": {"binary_data_size": size}}
    inp.update(extra)
    return {"parameters": {"sequence_id": 5151, "sequence_start": True, "sequence_end": True}, "inputs": [inp]}


ONE = np.float32(1.0).tobytes()

BAD_BINARY = [
    ("size larger than the shape", *_binary_request(_summator_header(8), ONE * 2),
     "Invalid content size of tensor proto - Expected: 4 bytes (shape [1,1], FP32); Actual: 8 bytes "
     "(binary_data_size); input name: input"),
    ("size beyond the body", *_binary_request(_summator_header(4), ONE[:2]),
     "Received buffer size is smaller than binary_data_size parameter indicates - unexpected size for "
     "input 'input', expecting 2 additional bytes for model 'summator'"),
    ("bytes left over", *_binary_request(_summator_header(4), ONE * 3),
     "Unexpected additional input data - for model 'summator': the inputs' binary_data_size add up to "
     "4 bytes, but 12 bytes follow the inference header"),
    ("size not an integer", *_binary_request(_summator_header(-1), ONE),
     "binary_data_size parameter is invalid and cannot be parsed - input input: expected a non-negative "
     "integer; Actual: -1"),
    ("data and binary", *_binary_request(_summator_header(4, data=[1.0]), ONE),
     "Request contains values both in binary data and in content value - input input has both \"data\" "
     "and \"binary_data_size\""),
    ("N larger than the body", _binary_request(_summator_header(4), ONE)[0], {"Inference-Header-Content-Length": "100000"},
     "Inference-Header-Content-Length header is invalid and couldn't be parsed - the inference header size "
     "100000 is larger than the body ("),
    ("N not a number", _binary_request(_summator_header(4), ONE)[0], {"Inference-Header-Content-Length": "12ab"},
     "Inference-Header-Content-Length header is invalid and couldn't be parsed - expected a byte count; "
     "Actual: \"12ab\""),
    ("no header", _binary_request(_summator_header(4), ONE)[0], {},
     "The file is not valid json"),
]


@pytest.mark.parametrize("what,body,headers,message", BAD_BINARY, ids=[c[0] for c in BAD_BINARY])
def test_bad_binary_requests_are_400_with_a_message(server, what, body, headers, message):
    status, answer = request(server.conn(), "POST", "/v2/models/summator/infer", body=body, headers=headers)
    assert status == 400, answer
    assert answer["error"].startswith(message), answer
    # Nothing touched a sequence: the id is still free for a one-request sequence.
    ok, _ = request(server.conn(), "POST", "/v2/models/summator/infer",
                    *_binary_request(_summator_header(4), ONE))
    assert ok == 200


def test_binary_request_without_its_header_names_the_header(server):
    h = json.dumps(_summator_header(4)).encode()
    # The JSON alone (no binary bytes) but an input claiming binary data and no header.
    status, answer = request(server.conn(), "POST", "/v2/models/summator/infer", body=h)
    assert status == 400
    assert answer["error"] == ("Received buffer size is smaller than binary_data_size parameter indicates - input "
                               "input has binary_data_size 4, but the request has no "
                               "Inference-Header-Content-Length header, so no binary data")


def test_body_limit_covers_the_binary_data(seqcore_bin, tmp_path):
    """The REST body limit is on the whole body, binary data included: 413 before it is read."""
    s = start_rest_server(tmp_path, cores=1, label="seqcore-kserve-http-limit")
    try:
        too_big = 64 * 1024 * 1024 + 1
        head = (f"POST /v2/models/dummy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {too_big}\r\n"
                f"Inference-Header-Content-Length: 100\r\n\r\n").encode()
        (status, _, body), = split_responses(raw_exchange(s.rest_port, head + b"{" * 1000))
        assert status == 413
        assert b"larger than the limit of 67108864 bytes" in body
    finally:
        s.stop()
