"""The REST API (HTTP/1.1) against a real server: TF-Serving REST (spec §1.3, §3.4) with OVMS's
exact messages, KServe v2 REST with Triton's sequence parameters and OVMS's special tensors,
/metrics (parsed with prometheus_client), and the HTTP layer's keep-alive, pipelining and limits.
Main cases go through curl, bulk through http.client, limits through raw sockets."""

from __future__ import annotations

import json
import socket

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import predict_ok, response_seq_id, summator_out, summator_request, START, END
from rest_helpers import (curl, curl_json, kserve_body, raw_exchange, request, split_responses,
                          start_rest_server, tfs_body)

PREDICT = "/v1/models/summator:predict"
INFER = "/v2/models/summator/infer"


@pytest.fixture(scope="module")
def srv(seqcore_bin, tmp_path_factory):
    s = start_rest_server(tmp_path_factory.mktemp("rest"))
    yield s
    s.stop()


# --------------------------------------------------------------------------------------------
# TF-Serving REST
# --------------------------------------------------------------------------------------------


def test_ready_line_names_rest(srv):
    line = next(l for l in srv.stderr_text().splitlines() if "seqcore: serving gRPC on" in l)
    assert line.startswith("seqcore: serving gRPC on")
    assert f"REST on 127.0.0.1:{srv.rest_port}" in line


def test_summator_exchange_of_spec_4_1(srv):
    url = srv.base + PREDICT
    assert curl_json("POST", url, tfs_body(1.0, 42, 1)) == (200, {"outputs": {"add_sum": [[1.0]], "sequence_id": [42]}})
    assert curl_json("POST", url, tfs_body(2.0, 42)) == (200, {"outputs": {"add_sum": [[3.0]], "sequence_id": [42]}})
    assert curl_json("POST", url, tfs_body(3.5, 42, 2)) == (200, {"outputs": {"add_sum": [[6.5]], "sequence_id": [42]}})
    assert curl_json("POST", url, tfs_body(1.0, 42)) == (404, {"error": "Sequence with provided ID does not exist"})


def test_versioned_url_and_server_assigned_id(srv):
    status, body = curl_json("POST", srv.base + "/v1/models/summator/versions/1:predict",
                             {"signature_name": "serving_default", "inputs": {"input": [[5.0]], "sequence_control_input": [1]}})
    assert status == 200, body
    sid = body["outputs"]["sequence_id"][0]
    assert sid > 0
    assert curl_json("POST", srv.base + PREDICT, tfs_body(1.0, sid, 2))[1]["outputs"]["add_sum"] == [[6.0]]
    assert curl_json("POST", srv.base + "/v1/models/summator/versions/7:predict", tfs_body(1.0, sid)) == \
        (404, {"error": "Model with requested version is not found"})
    assert curl_json("POST", srv.base + "/v1/models/nope:predict", tfs_body(1.0, sid)) == \
        (404, {"error": "Model with requested name is not found"})


@pytest.mark.parametrize("special,message", [
    ('"sequence_id": [1, 2]', "Invalid input shape - Required shape for sequence_id is: (1)"),
    ('"sequence_id": 10', "Special input proto does not contain tensor shape information"),
    ('"sequence_id": []', "Invalid input shape - Required shape for sequence_id is: (1)"),
    ('"sequence_id": [-1]', "Could not parse input content. Not valid ndarray detected"),
    ('"sequence_id": [1.5]', "Could not parse input content. Not valid ndarray detected"),
    ('"sequence_id": [[1]]', "Could not parse input content. Not valid ndarray detected"),
    ('"sequence_id": [5], "sequence_control_input": [1, 1]',
     "Invalid input shape - Required shape for sequence_control_input is: (1)"),
    ('"sequence_control_input": [99]', "Unexpected value of sequence control input"),
    ('"sequence_control_input": [2]', "Sequence ID has not been provided in request inputs"),
])
def test_column_format_special_input_errors(srv, special, message):
    body = '{"inputs": {"input": [[1.0]], ' + special + "}}"
    assert curl_json("POST", srv.base + PREDICT, body) == (400, {"error": message})


@pytest.mark.parametrize("instances,message", [
    ('[{"input": [1.0], "sequence_id": 10, "sequence_control_input": 1}]',
     "Could not parse instance content. Not valid ndarray detected"),
    ('[{"input": [1.0], "sequence_id": [10], "sequence_control_input": [1]}]',
     "Invalid number of shape dimensions - Required shape for sequence_id is: (1)"),
    ('[[1.0]]', "Sequence ID has not been provided in request inputs"),
])
def test_row_format_does_not_work_for_stateful_models(srv, instances, message):
    assert curl_json("POST", srv.base + PREDICT, '{"instances": ' + instances + "}") == (400, {"error": message})


def test_model_input_errors_use_ovms_messages(srv):
    url = srv.base + PREDICT
    assert curl_json("POST", url, {"inputs": {"input": [[1.0, 2.0]], "sequence_control_input": [1]}}) == \
        (400, {"error": "Invalid input shape - Expected: (1,1); Actual: (1,2); input name: input"})
    assert curl_json("POST", url, {"inputs": {"input": [1.0], "sequence_control_input": [1]}}) == \
        (400, {"error": "Invalid number of shape dimensions - Expected: (1,1); Actual: (1); input name: input"})
    assert curl_json("POST", url, {"inputs": {"input": [[1.0]], "extra": [1], "sequence_control_input": [1]}}) == \
        (400, {"error": "Invalid number of inputs - Expected: 2; Actual: 3"})
    assert curl_json("POST", url, "{not json") == (400, {"error": "The file is not valid json"})
    assert curl_json("POST", url, '{"inputs": {"input": [[1.0]]}, "instances": []}') == \
        (400, {"error": "Invalid JSON structure. Could not detect row or column format"})


def test_dummy_column_and_row_formats(srv):
    x = [[float(i) for i in range(10)]]
    y = [[float(i + 1) for i in range(10)]]
    url = srv.base + "/v1/models/dummy:predict"
    assert curl_json("POST", url, {"inputs": {"b": x}}) == (200, {"outputs": y})
    assert curl_json("POST", url, {"inputs": x}) == (200, {"outputs": y})
    assert curl_json("POST", url, {"instances": x}) == (200, {"predictions": y})
    assert curl_json("POST", url, {"instances": [{"b": x[0]}]}) == (200, {"predictions": y})
    # Special inputs on a stateless model are just unexpected inputs.
    assert curl_json("POST", url, {"inputs": {"b": x, "sequence_id": [1]}}) == \
        (400, {"error": "Invalid number of inputs - Expected: 1; Actual: 2"})


def test_status_and_metadata(srv):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                           "status": {"error_code": "OK", "error_message": ""}}]}
    assert curl_json("GET", srv.base + "/v1/models/summator") == (200, expected)
    assert curl_json("GET", srv.base + "/v1/models/summator/versions/1") == (200, expected)
    status, md = curl_json("GET", srv.base + "/v1/models/summator/metadata")
    assert status == 200
    assert md["modelSpec"] == {"name": "summator", "signatureName": "", "version": "1"}
    sd = md["metadata"]["signature_def"]
    assert sd["@type"] == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    sig = sd["signatureDef"]["serving_default"]
    assert sig["methodName"] == "tensorflow/serving/predict"
    assert list(sig["inputs"]) == ["input"] and list(sig["outputs"]) == ["add_sum"]
    assert sig["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["input"]["tensorShape"]["dim"]] == ["1", "1"]
    assert curl_json("GET", srv.base + "/v1/models/nope/metadata") == (404, {"error": "Model with requested name is not found"})


def test_rest_and_grpc_share_sequences(srv):
    """A sequence started over REST continues over gRPC and ends over REST."""
    url = srv.base + PREDICT
    assert curl_json("POST", url, tfs_body(2.0, 9001, START))[0] == 200
    resp = predict_ok(srv.stub, summator_request(3.0, seq_id=9001))
    assert summator_out(resp) == 5.0 and response_seq_id(resp) == 9001
    assert curl_json("POST", url, tfs_body(1.0, 9001, END))[1]["outputs"]["add_sum"] == [[6.0]]


def test_uint64_ids_are_exact(srv):
    big = 2**64 - 1
    url = srv.base + PREDICT
    assert curl_json("POST", url, tfs_body(1.0, big, START))[1]["outputs"]["sequence_id"] == [big]
    assert curl_json("POST", url, tfs_body(1.0, big, END))[1]["outputs"]["sequence_id"] == [big]
    status, body = curl_json("POST", srv.base + INFER, kserve_body(1.0, {"sequence_id": big - 1, "sequence_start": True, "sequence_end": True}))
    assert status == 200, body
    assert body["parameters"]["sequence_id"] == big - 1


# --------------------------------------------------------------------------------------------
# KServe v2 REST
# --------------------------------------------------------------------------------------------


def test_kserve_health_and_metadata(srv):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/summator/ready", "/v2/models/dummy/versions/1/ready"):
        status, headers, body = curl(srv.base + path)
        assert (status, body, headers["content-length"]) == (200, "", "0"), path
    assert curl_json("GET", srv.base + "/v2/models/nope/ready") == (404, {"error": "Model with requested name is not found"})
    status, meta = curl_json("GET", srv.base + "/v2")
    assert status == 200 and meta["name"] and meta["version"]
    assert curl_json("GET", srv.base + "/v2/models/summator") == (200, {
        "name": "summator", "versions": ["1"], "platform": "OpenVINO",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1]}],
        "outputs": [{"name": "add_sum", "datatype": "FP32", "shape": [1, 1]}],
    })
    assert curl_json("GET", srv.base + "/v2/models/summator/versions/1")[1]["name"] == "summator"


@pytest.mark.parametrize("sid", [4242, "utterance-7"])
def test_kserve_triton_parameters(srv, sid):
    url = srv.base + INFER
    steps = [({"sequence_id": sid, "sequence_start": True}, 1.0, 1.0),
             ({"sequence_id": sid}, 2.0, 3.0),
             ({"sequence_id": sid, "sequence_end": True}, 3.5, 6.5)]
    for params, x, want in steps:
        body = kserve_body(x, params)
        body["id"] = "req-1"
        status, out = curl_json("POST", url, body)
        assert status == 200, out
        assert out["model_name"] == "summator" and out["model_version"] == "1" and out["id"] == "req-1"
        assert out["parameters"] == {"sequence_id": sid}
        assert out["outputs"] == [{"name": "add_sum", "datatype": "FP32", "shape": [1, 1], "data": [want]}]
    assert curl_json("POST", url, kserve_body(1.0, {"sequence_id": sid})) == \
        (404, {"error": "Sequence with provided ID does not exist"})


def test_kserve_numeric_and_string_ids_are_distinct(srv):
    url = srv.base + INFER
    assert curl_json("POST", url, kserve_body(1.0, {"sequence_id": 77, "sequence_start": True}))[0] == 200
    assert curl_json("POST", url, kserve_body(10.0, {"sequence_id": "77", "sequence_start": True}))[0] == 200
    assert curl_json("POST", url, kserve_body(1.0, {"sequence_id": 77, "sequence_end": True}))[1]["outputs"][0]["data"] == [2.0]
    assert curl_json("POST", url, kserve_body(1.0, {"sequence_id": "77", "sequence_end": True}))[1]["outputs"][0]["data"] == [11.0]


def test_kserve_ovms_special_tensors(srv):
    url = srv.base + INFER
    status, out = curl_json("POST", url, kserve_body(1.0, specials={"sequence_control_input": 1}))
    assert status == 200, out
    sid_out = out["outputs"][1]
    assert sid_out["name"] == "sequence_id" and sid_out["datatype"] == "UINT64" and sid_out["shape"] == [1]
    sid = sid_out["data"][0]
    status, out = curl_json("POST", url, kserve_body(2.0, specials={"sequence_id": sid, "sequence_control_input": 2}))
    assert status == 200 and out["outputs"][0]["data"] == [3.0]
    assert out["outputs"][1]["data"] == [sid]
    assert curl_json("POST", url, kserve_body(1.0, specials={"sequence_id": sid})) == \
        (404, {"error": "Sequence with provided ID does not exist"})
    # OVMS's checks on the special tensors.
    bad = kserve_body(1.0)
    bad["inputs"].append({"name": "sequence_id", "shape": [2], "datatype": "UINT64", "data": [1, 2]})
    assert curl_json("POST", url, bad) == (400, {"error": "Invalid input shape - Required shape for sequence_id is: (1)"})
    assert curl_json("POST", url, kserve_body(1.0)) == (400, {"error": "Sequence ID has not been provided in request inputs"})


def test_kserve_dummy_and_input_errors(srv):
    url = srv.base + "/v2/models/dummy/infer"
    x = [float(i) for i in range(10)]
    body = {"inputs": [{"name": "b", "shape": [1, 10], "datatype": "FP32", "data": x}]}
    status, out = curl_json("POST", url, body)
    assert status == 200, out
    assert out["outputs"] == [{"name": "a", "datatype": "FP32", "shape": [1, 10], "data": [v + 1 for v in x]}]
    assert "parameters" not in out
    nested = {"inputs": [{"name": "b", "shape": [1, 10], "datatype": "FP32", "data": [x]}]}
    assert curl_json("POST", url, nested)[1]["outputs"][0]["data"] == [v + 1 for v in x]
    strings = {"inputs": [{"name": "b", "shape": [1, 10], "datatype": "BYTES", "data": ["a"] * 10}]}
    assert curl_json("POST", url, strings) == (400, {"error": "Invalid input precision - Expected: FP32; Actual: STRING; input name: b"})
    short = {"inputs": [{"name": "b", "shape": [1, 10], "datatype": "FP32", "data": x[:3]}]}
    assert curl_json("POST", url, short) == \
        (400, {"error": "Invalid number of values in tensor proto container - Expected: 10; Actual: 3; input name: b"})
    triton = {"parameters": {"sequence_id": 5}, **body}
    status, out = curl_json("POST", url, triton)
    assert status == 400 and "stateless" in out["error"]


# --------------------------------------------------------------------------------------------
# Routes and the HTTP layer
# --------------------------------------------------------------------------------------------


def test_unknown_routes_and_methods(srv):
    assert curl_json("GET", srv.base + "/v3/nothing") == (404, {"error": "Invalid request URL"})
    assert curl_json("GET", srv.base + "/v1/models/summator:classify") == (404, {"error": "Invalid request URL"})
    assert curl_json("GET", srv.base + PREDICT) == (405, {"error": "Unsupported method"})
    assert curl_json("DELETE", srv.base + "/v1/models/summator") == (405, {"error": "Unsupported method"})
    assert curl_json("GET", srv.base + "/v1/models/summator/versions/x") == \
        (400, {"error": "Could not parse model version in request"})


def test_keep_alive_many_requests_on_one_connection(srv):
    c = srv.conn()
    try:
        assert request(c, "POST", PREDICT, tfs_body(0.0, 5150, START))[0] == 200
        sock = c.sock
        total = 0.0
        for i in range(200):
            status, body = request(c, "POST", PREDICT, tfs_body(1.0, 5150))
            assert status == 200, body
            total += 1.0
            assert body["outputs"]["add_sum"] == [[total]]
            # Errors keep the connection too.
            if i % 50 == 0:
                assert request(c, "GET", "/v1/models/nope")[0] == 404
        assert c.sock is sock, "the server closed a keep-alive connection"
        assert request(c, "POST", PREDICT, tfs_body(0.0, 5150, END))[0] == 200
    finally:
        c.close()


def test_pipelined_requests_are_answered_in_order(srv):
    def req(body: dict) -> bytes:
        data = json.dumps(body).encode()
        return (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data
    stream = req(tfs_body(1.0, 6160, START))
    stream += b"".join(req(tfs_body(1.0, 6160)) for _ in range(8))
    stream += b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    stream += req(tfs_body(1.0, 6160, END))
    stream += b"GET /v1/models/summator HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    responses = split_responses(raw_exchange(srv.rest_port, stream))
    assert [r[0] for r in responses] == [200] * 12
    sums = [json.loads(r[2])["outputs"]["add_sum"][0][0] for r in responses[:9]]
    assert sums == [float(i) for i in range(1, 10)]
    assert responses[9][2] == b""
    assert json.loads(responses[10][2])["outputs"]["add_sum"] == [[10.0]]
    assert responses[11][1].get("connection") == "close"


def test_oversized_body_gets_413_without_sending_it(srv):
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 40}\r\n\r\n".encode()
    responses = split_responses(raw_exchange(srv.rest_port, head + b"{" * 1000))
    assert len(responses) == 1
    status, headers, body = responses[0]
    assert status == 413 and headers["content-type"] == "application/json"
    assert "larger than the limit" in json.loads(body)["error"]
    # curl sends Expect: 100-continue for a large upload; the 413 comes before the body.
    status, headers, text = curl("-X", "POST", "-H", f"Content-Length: {1 << 40}", "-H", "Expect: 100-continue",
                                 "--data-binary", "x", srv.base + PREDICT)
    assert status == 413, text


def test_huge_header_gets_431(srv):
    head = f"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 70000}\r\n\r\n".encode()
    responses = split_responses(raw_exchange(srv.rest_port, head))
    assert responses[0][0] == 431
    assert "header" in json.loads(responses[0][2])["error"]
    status, _, _ = curl("-H", "X-Big: " + "b" * 20000, srv.base + "/v2/health/live")
    assert status == 431


def test_chunked_body_gets_501_with_a_clear_error(srv):
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()
    status, _, body = split_responses(raw_exchange(srv.rest_port, head))[0]
    assert status == 501
    assert "Content-Length" in json.loads(body)["error"]


def test_malformed_request_gets_400(srv):
    status, _, body = split_responses(raw_exchange(srv.rest_port, b"GARBAGE\x01 / HTTP/1.1\r\n\r\n"))[0]
    assert status == 400 and json.loads(body)["error"]


def test_large_body_within_limits(srv):
    """A 1 MB body (an oversized but valid JSON document) arrives in many reads."""
    body = {"inputs": {"input": [[1.0]], "sequence_control_input": [1]}, "pad": "x" * (1 << 20)}
    c = srv.conn()
    try:
        status, out = request(c, "POST", PREDICT, body)
    finally:
        c.close()
    assert status == 200, out
    sid = out["outputs"]["sequence_id"][0]
    assert curl_json("POST", srv.base + PREDICT, tfs_body(0.0, sid, END))[0] == 200


# --------------------------------------------------------------------------------------------
# /metrics
# --------------------------------------------------------------------------------------------


def metric_samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} of every sample."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def requests_counter(samples, kind, api, interface, method, name):
    labels = frozenset({"api": api, "interface": interface, "method": method, "name": name, "version": "1"}.items())
    return samples[(f"ovms_requests_{kind}_total", labels)] if (f"ovms_requests_{kind}_total", labels) in samples \
        else samples[(f"ovms_requests_{kind}", labels)]


def test_metrics_count_exactly_the_requests_sent(seqcore_bin, tmp_path):
    s = start_rest_server(tmp_path, label="seqcore-rest-metrics")
    try:
        status, headers, text = curl(s.base + "/metrics")
        assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4"
        before = metric_samples(text)
        assert requests_counter(before, "success", "TensorFlowServing", "REST", "Predict", "summator") == 0
        # REST: 4 successful predicts, 2 failed ones (a missing sequence, a bad special input).
        url = s.base + PREDICT
        assert curl_json("POST", url, tfs_body(1.0, 31, START))[0] == 200
        assert curl_json("POST", url, tfs_body(1.0, 31))[0] == 200
        assert curl_json("POST", url, tfs_body(1.0, 31))[0] == 200
        assert curl_json("POST", url, tfs_body(1.0, 31, END))[0] == 200
        assert curl_json("POST", url, tfs_body(1.0, 31))[0] == 404
        assert curl_json("POST", url, '{"inputs": {"input": [[1.0]], "sequence_id": [1, 2]}}')[0] == 400
        # An unknown model is not counted (as in OVMS).
        assert curl_json("POST", s.base + "/v1/models/nope:predict", tfs_body(1.0, 31))[0] == 404
        # Status, metadata and KServe REST.
        assert curl_json("GET", s.base + "/v1/models/summator")[0] == 200
        assert curl_json("GET", s.base + "/v1/models/summator/metadata")[0] == 200
        assert curl_json("POST", s.base + INFER, kserve_body(1.0, {"sequence_id": 3, "sequence_start": True, "sequence_end": True}))[0] == 200
        assert curl_json("POST", s.base + INFER, kserve_body(1.0, {"sequence_id": 3}))[0] == 404
        # gRPC: 3 successful predicts and 1 failure.
        predict_ok(s.stub, summator_request(1.0, seq_id=32, control=START))
        predict_ok(s.stub, summator_request(1.0, seq_id=32))
        predict_ok(s.stub, summator_request(1.0, seq_id=32, control=END))
        with pytest.raises(grpc.RpcError):
            s.stub.Predict(summator_request(1.0, seq_id=32), timeout=10)

        after = metric_samples(curl(s.base + "/metrics")[2])
        def count(kind, api, interface, method, name="summator"):
            return requests_counter(after, kind, api, interface, method, name)
        assert count("success", "TensorFlowServing", "REST", "Predict") == 4
        assert count("fail", "TensorFlowServing", "REST", "Predict") == 2
        assert count("success", "TensorFlowServing", "REST", "GetModelStatus") == 1
        assert count("success", "TensorFlowServing", "REST", "GetModelMetadata") == 1
        assert count("success", "KServe", "REST", "ModelInfer") == 1
        assert count("fail", "KServe", "REST", "ModelInfer") == 1
        assert count("success", "TensorFlowServing", "gRPC", "Predict") == 3
        assert count("fail", "TensorFlowServing", "gRPC", "Predict") == 1
        assert count("success", "TensorFlowServing", "REST", "Predict", "dummy") == 0
        rest_time = frozenset({"interface": "REST", "name": "summator", "version": "1"}.items())
        assert after[("ovms_request_time_us_count", rest_time)] == 8  # Predict + ModelInfer, all outcomes
    finally:
        s.stop()


def test_rest_is_off_by_default(start_server):
    s = start_server(config=[{"name": "dummy", "base_path": str(__import__("conftest").model_dir("dummy"))}], cores=1)
    line = next(l for l in s.stderr_text().splitlines() if "seqcore: serving gRPC on" in l)
    assert "REST" not in line


def test_same_port_is_rejected(seqcore_bin):
    from conftest import run_binary, model_dir
    out = run_binary(["--model_name", "dummy", "--model_path", str(model_dir("dummy")), "--port", "9555", "--rest_port", "9555"])
    assert out.returncode == 64
    assert "--port and --rest_port cannot be the same" in out.stderr


def test_rest_port_in_use_fails_start_up(seqcore_bin):
    from conftest import run_binary, model_dir, free_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_binary(["--model_name", "dummy", "--model_path", str(model_dir("dummy")), "--port", str(free_port()),
                          "--grpc_bind_address", "127.0.0.1", "--rest_port", str(port), "--cores", "1"])
    assert out.returncode != 0
    assert "REST" in out.stderr and str(port) in out.stderr
