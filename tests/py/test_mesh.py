"""The cross-shard mesh under a flood of metrics scrapes and statistics requests, on 2 shards,
while sequences are being forwarded: every message kind counts against the mesh's bound, so a
scrape is answered (200) or refused (503 / RESOURCE_EXHAUSTED, "Server is overloaded") and
never brings a shard down; every forwarded step keeps its correct running sum.

The unit tests in src/shard/tests.rs fill the bound exactly and check the refusal of each
kind; this test shows the same on the real server with real clients."""

import http.client
import signal
import threading
import time

import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from conftest import END, START, get_stats, model_dir, predict_ok, shard_of, summator_out, summator_request, wait_until
from rest_helpers import start_rest_server

SHARDS = 2
SEQUENCES = 16
STEPS = 60
SCRAPERS = 3
STATS_CALLERS = 3
OVERLOADED = "Server is overloaded"


@pytest.fixture
def srv(seqcore_bin, tmp_path):
    models = [{"name": "summator", "base_path": str(model_dir("summator")), "stateful": True,
               "max_sequence_number": 1000}]
    s = start_rest_server(tmp_path, models=models, cores=SHARDS, label="seqcore-mesh")
    yield s
    s.stop()


def scrape_loop(srv, stop, outcomes):
    conn = srv.conn()
    while not stop.is_set():
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read().decode()
        if r.status == 200:
            assert "ovms_requests_success" in body
        else:
            assert r.status == 503 and OVERLOADED in body, (r.status, body)
        outcomes.append(r.status)
    conn.close()


def stats_loop(srv, stop, outcomes):
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        while not stop.is_set():
            try:
                stats = get_stats(ch)
                assert len(stats["shards"]) == SHARDS
                outcomes.append("ok")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and OVERLOADED in e.details(), e
                outcomes.append("refused")


def sequence_loop(srv, ids, errors):
    """Steps each of `ids` STEPS times, interleaved, on one connection; checks every sum."""
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        sums = {i: 0.0 for i in ids}
        for step in range(STEPS):
            for i in ids:
                control = START if step == 0 else END if step == STEPS - 1 else None
                x = float(step + 1)
                sums[i] += x
                got = summator_out(predict_ok(stub, summator_request(x, seq_id=i, control=control)))
                if got != sums[i]:
                    errors.append((i, step, got, sums[i]))


def test_scrape_and_stats_floods_during_forwarding_keep_both_shards_serving(srv):
    # Half the sequences are owned by each shard; each connection lands on one shard, so about
    # half of all steps are forwarded to the other.
    ids = list(range(1000, 1000 + SEQUENCES))
    assert {shard_of(i, SHARDS) for i in ids} == {0, 1}
    stop = threading.Event()
    scrapes, stats, errors = [], [], []
    flood = [threading.Thread(target=scrape_loop, args=(srv, stop, scrapes)) for _ in range(SCRAPERS)]
    flood += [threading.Thread(target=stats_loop, args=(srv, stop, stats)) for _ in range(STATS_CALLERS)]
    workers = [threading.Thread(target=sequence_loop, args=(srv, ids[k::4], errors)) for k in range(4)]
    failures = []

    def guarded(t):
        run = t.run

        def wrapped():
            try:
                run()
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(repr(e))
        t.run = wrapped

    for t in flood + workers:
        guarded(t)
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    for t in flood:
        t.join(timeout=30)
    assert not failures, failures
    assert not errors, f"wrong running sums: {errors[:5]}"
    assert scrapes and stats, "the floods ran"
    assert srv.proc.poll() is None, "the server is still running"
    assert "panicked" not in srv.stderr_text()

    # Both shards serve, and every sequence is gone; forwarding happened.
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        wait_until(lambda: all(m["live_sequences"] == 0 for s in get_stats(ch)["shards"] for m in s["models"]),
                   timeout=10)
        final = get_stats(ch)
    assert sum(s["forwarded_in"] for s in final["shards"]) > 0
    steps = [m["steps"] for s in final["shards"] for m in s["models"]]
    assert all(n > 0 for n in steps) and sum(steps) == SEQUENCES * STEPS, steps
    conn = srv.conn()
    conn.request("GET", "/metrics")
    assert conn.getresponse().status == 200


def test_a_stopped_server_reports_the_stall_of_each_shard_and_serves_on(srv):
    """SIGSTOP holds every shard's thread off its CPU for 0.6 s: each shard's expiry timer then
    fires late, and the stall detector counts it and logs where the time went (neither running
    nor waiting for a CPU). The server serves on."""
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        assert summator_out(predict_ok(stub, summator_request(2.0, seq_id=5, control=START))) == 2.0
        before = get_stats(ch)
        assert [s["stalls"] for s in before["shards"]] == [0] * SHARDS, before
        srv.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.6)
        srv.proc.send_signal(signal.SIGCONT)
        assert wait_until(lambda: all(s["stalls"] >= 1 for s in get_stats(ch)["shards"]), timeout=5), srv.stderr_text()[-3000:]
        after = get_stats(ch)
        assert all(s["stall_worst_ms"] >= 300 for s in after["shards"]), [(s["stalls"], s["stall_worst_ms"]) for s in after["shards"]]
        assert summator_out(predict_ok(stub, summator_request(3.0, seq_id=5, control=END))) == 5.0
    warnings = [line for line in srv.stderr_text().splitlines() if "the event loop stalled" in line]
    assert sorted(w.split(":")[0].rsplit(" ", 1)[1] for w in warnings) == [str(s) for s in range(SHARDS)], warnings
    for w in warnings:
        assert "ms neither; the thread was neither running nor waiting for a CPU" in w, w
    conn = srv.conn()
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for s in range(SHARDS):
        assert f'seqcore_shard_stalls_total{{shard="{s}"}} ' in text, text[-2000:]
