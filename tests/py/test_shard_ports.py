"""Shard-aware routing (issue 10, part 4): with --shard_port_base B, shard s also serves gRPC
alone on port B+s; a client that computes a sequence's owner with the documented routing
function (conftest.shard_of, the server's shard::shard_of) reaches it without a cross-shard hop.
Every answer of a stateful model names its owner and the shard count (gRPC initial metadata and
HTTP headers `seqcore-shard`, `seqcore-shards`), on every port; the ordinary port still works."""

import json
import socket

import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from conftest import END, START, model_dir, shard_of, summator_out, summator_request
from rest_helpers import RestServer, curl, server_args_for_config

SHARDS = 2


def consecutive_free_ports(n: int) -> int:
    """A base port with n free ports from it (bound and released at once, on 127.0.0.1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    pytest.fail("no run of free ports")


@pytest.fixture
def srv(seqcore_bin, tmp_path):
    base = consecutive_free_ports(SHARDS)
    models = [{"name": "summator", "base_path": str(model_dir("summator")), "stateful": True}]
    args = server_args_for_config(models, tmp_path) + ["--cores", str(SHARDS), "--shard_port_base", str(base)]
    s = RestServer(args, tmp_path, label="seqcore-shard-ports")
    s.shard_port_base = base
    yield s
    s.stop()


def forwards(srv):
    stats = srv.stats()["shards"]
    return sum(sh["forwarded_out"] for sh in stats)


def run_sequence(stub, sid, values):
    """START, steps, END; returns the (sum, owner metadata) of every answer."""
    out = []
    for i, v in enumerate(values):
        control = START if i == 0 else END if i == len(values) - 1 else None
        resp, call = stub.Predict.with_call(summator_request(v, seq_id=sid, control=control), timeout=10)
        meta = dict(call.initial_metadata())
        out.append((summator_out(resp), meta.get("seqcore-shard"), meta.get("seqcore-shards")))
    return out


def test_each_shard_port_reaches_its_shard_without_a_hop(srv):
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{srv.shard_port_base + s}")) for s in range(SHARDS)]
    before = forwards(srv)
    owners = set()
    for sid in range(1000, 1040):
        owner = shard_of(sid, SHARDS)
        owners.add(owner)
        got = run_sequence(stubs[owner], sid, [1.0, 2.0, 3.0, 4.0])
        assert [g[0] for g in got] == [1.0, 3.0, 6.0, 10.0]
        assert all(g[1:] == (str(owner), str(SHARDS)) for g in got), got
    assert owners == set(range(SHARDS))
    assert forwards(srv) == before, "a sequence driven through its owner's port never crossed shards"


def test_the_ordinary_port_forwards_and_names_the_owner(srv):
    before = forwards(srv)
    stub = srv.stub
    for sid in range(2000, 2020):
        got = run_sequence(stub, sid, [5.0, 1.0])
        assert [g[0] for g in got] == [5.0, 6.0]
        assert all(g[1:] == (str(shard_of(sid, SHARDS)), str(SHARDS)) for g in got), got
    # With SO_REUSEPORT, the plain port's connection lands on one shard: the other's sequences hop.
    assert forwards(srv) > before


def test_rest_answers_name_the_owner(srv):
    sid = 3001
    body = {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [2.5]}],
            "parameters": {"sequence_id": sid, "sequence_start": True, "sequence_end": True}}
    status, headers, text = curl("-X", "POST", "-H", "Content-Type: application/json", "--data", json.dumps(body),
                                 f"{srv.base}/v2/models/summator/infer")
    assert status == 200, text
    assert (headers.get("seqcore-shard"), headers.get("seqcore-shards")) == (str(shard_of(sid, SHARDS)), "2")


def test_shard_ports_that_hold_the_grpc_port_are_refused(seqcore_bin, tmp_path):
    import subprocess
    models = [{"name": "summator", "base_path": str(model_dir("summator")), "stateful": True}]
    args = server_args_for_config(models, tmp_path) + ["--cores", "2", "--port", "9300", "--shard_port_base", "9299"]
    p = subprocess.run([str(seqcore_bin), *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 64, p.stderr
    assert "--shard_port_base 9299: the shard ports 9299-9300 include --port 9300" in p.stderr
