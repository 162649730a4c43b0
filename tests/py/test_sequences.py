"""Sequences end to end: outputs equal in-process OpenVINO, many interleaved sequences over
several connections, routing across shards, idle timeouts, LowLatency2."""

import json
import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from conftest import (
    END,
    require_ovms_summator,
    START,
    make_request,
    model_dir,
    module_server,
    output_array,
    predict_err,
    predict_ok,
    response_seq_id,
    run_threads,
    sequences_by_shard,
    shard_of,
    summator_out,
    summator_request,
    wait_until,
)
from reference import F32, Reference, model_xml

MSG_MISSING = "Sequence with provided ID does not exist"
# f32's rounding level: the servers here are pinned to f32 (conftest.write_config) and so are
# the references; test_models.py compares in bf16 as well where the CPU has it.
LSTM_ATOL = 1e-5


def cfg(name, model=None, **extra):
    c = {"name": name, "base_path": str(model_dir(model or name)), "stateful": True}
    c.update(extra)
    return c


@pytest.fixture(scope="module")
def srv(seqcore_bin, tmp_path_factory):
    """summator, lstm (nireq 2 each) and lstm_ti with LowLatency2, on all cores; no resident
    memory budget beyond the 2 requests made at start, so that more live sequences swap."""
    s = module_server(seqcore_bin, tmp_path_factory, [
        cfg("summator", nireq=2),
        cfg("lstm", nireq=2),
        cfg("lstm_ti", low_latency_transformation=True, nireq=2),
    ], label="sequences", extra_args=["--resident_memory_mb", "0"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ref_summator():
    return Reference(model_xml("summator"), config=F32)


@pytest.fixture(scope="module")
def ref_lstm():
    return Reference(model_xml("lstm"), config=F32)


def feature_steps(n, seed):
    rng = np.random.default_rng(seed)
    return [{"features": rng.standard_normal((1, 40)).astype(np.float32)} for _ in range(n)]


def summator_steps(n, seed):
    rng = np.random.default_rng(seed)
    return [{"input": rng.uniform(-10, 10, (1, 1)).astype(np.float32)} for _ in range(n)]


def control_for(step, n):
    return START if step == 0 else END if step == n - 1 else None


class SeqRun:
    """One sequence driven step by step over a stub, checked against expected outputs."""

    def __init__(self, stub, model, sid, steps, expected, out_name, atol):
        self.stub, self.model, self.sid, self.steps = stub, model, sid, steps
        self.expected, self.out_name, self.atol = expected, out_name, atol
        self.pos = 0

    def done(self):
        return self.pos >= len(self.steps)

    def step(self):
        i, n = self.pos, len(self.steps)
        resp = predict_ok(self.stub, make_request(self.model, self.steps[i], seq_id=self.sid,
                                                  control=control_for(i, n)))
        assert response_seq_id(resp) == self.sid
        got = output_array(resp, self.out_name)
        want = self.expected[i][self.out_name]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=self.atol,
                                   err_msg=f"{self.model} sequence {self.sid} step {i}")
        self.pos += 1


# ============================================================================================
# (1) equal to in-process OpenVINO
# ============================================================================================


def test_summator_equals_reference(srv, ref_summator):
    steps = summator_steps(30, seed=1)
    run = SeqRun(srv.stub, "summator", 7001, steps, ref_summator.run_sequence(steps), "add_sum", 0.0)
    while not run.done():
        run.step()


def test_lstm_equals_reference(srv, ref_lstm):
    steps = feature_steps(25, seed=2)
    run = SeqRun(srv.stub, "lstm", 7002, steps, ref_lstm.run_sequence(steps), "scores", LSTM_ATOL)
    while not run.done():
        run.step()


def test_interleaved_sequences_equal_reference_with_nireq_2(srv, ref_lstm, ref_summator):
    """10 lstm + 10 summator sequences of different lengths, advanced one step at a time in
    turn: with 2 infer requests and no budget for more, every step restores state saved from
    another infer request (in place where the plugin allows it: src/ov, probe_in_place)."""
    swaps_before = srv.model_counter("lstm", "swaps_in")
    runs = []
    for k in range(10):
        steps = feature_steps(6 + k, seed=100 + k)
        runs.append(SeqRun(srv.stub, "lstm", 8000 + k, steps, ref_lstm.run_sequence(steps), "scores", LSTM_ATOL))
        steps = summator_steps(5 + 2 * k, seed=200 + k)
        runs.append(SeqRun(srv.stub, "summator", 8100 + k, steps, ref_summator.run_sequence(steps), "add_sum", 0.0))
    for _ in range(100):
        live = [r for r in runs if not r.done()]
        if not live:
            break
        for r in live:
            r.step()
    assert all(r.done() for r in runs)
    assert srv.live_sequences("lstm") == 0 and srv.live_sequences("summator") == 0
    # 10 sequences over 2 requests per shard (at most 2 shards here): most steps swapped in.
    assert srv.model_counter("lstm", "swaps_in") - swaps_before > 30
    assert srv.model_counter("lstm", "infer_requests") == 2 * len(srv.stats()["shards"])


def test_every_live_sequence_stays_resident_within_the_budget(start_server, ref_lstm):
    """The default budget: 12 interleaved LSTM sequences on one shard that starts with 2 infer
    requests grow its pool to 12, and no step copies a state (and the outputs stay exact)."""
    s = start_server(config=[cfg("lstm", nireq=2)], cores=1)
    runs = []
    for k in range(12):
        steps = feature_steps(8, seed=500 + k)
        runs.append(SeqRun(s.stub, "lstm", 9000 + k, steps, ref_lstm.run_sequence(steps),
                           "scores", LSTM_ATOL))
    for _ in range(7):
        for r in runs:
            r.step()
    m = s.stats()["shards"][0]["models"][0]
    assert (m["live_sequences"], m["resident_sequences"], m["infer_requests"]) == (12, 12, 12)
    assert m["infer_requests_max"] == 500, "64 MiB of ~14.5 KiB requests, capped by max_sequence_number"
    assert (m["swaps_out"], m["swaps_in"]) == (0, 0)
    while not all(r.done() for r in runs):
        for r in runs:
            if not r.done():
                r.step()
    m = s.stats()["shards"][0]["models"][0]
    assert (m["live_sequences"], m["resident_sequences"], m["infer_requests"]) == (0, 0, 12)


def test_batched_steps_equal_the_sequences_run_alone(start_server, ref_lstm, ref_summator):
    """max_batch_size 4 (with a 2 ms queue delay, so steps that arrive together are batched):
    12 LSTM and 6 summator sequences, each driven by its own thread over 3 connections, on one
    shard. Every output equals in-process OpenVINO running that sequence alone, batches really
    ran, and every sequence ended."""
    s = start_server(config=[cfg("lstm", max_batch_size=4, max_queue_delay_us=2000),
                             cfg("summator", max_batch_size=4, max_queue_delay_us=2000)], cores=1)
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(s.new_channel()) for _ in range(3)]
    runs = []
    for k in range(12):
        steps = feature_steps(10 + k % 4, seed=700 + k)
        runs.append(SeqRun(stubs[k % 3], "lstm", 9100 + k, steps, ref_lstm.run_sequence(steps),
                           "scores", LSTM_ATOL))
    for k in range(6):
        steps = summator_steps(12, seed=800 + k)
        runs.append(SeqRun(stubs[k % 3], "summator", 9200 + k, steps, ref_summator.run_sequence(steps),
                           "add_sum", 0.0))

    def drive(r):
        while not r.done():
            r.step()

    run_threads(drive, [(r,) for r in runs])
    for name, n_steps in (("lstm", sum(len(r.steps) for r in runs[:12])), ("summator", 72)):
        m = next(m for m in s.stats()["shards"][0]["models"] if m["name"] == name)
        assert m["batch_max"] == 4
        assert m["live_sequences"] == 0 and m["steps"] == n_steps
        assert m["batches"] > 0, f"{name}: no step was batched"
        assert m["batched_steps"] >= 2 * m["batches"], f"{name}: {m['batched_steps']} steps in {m['batches']} batches"


def test_one_compile_per_numa_node_serves_every_shard_exactly(start_server, ref_lstm, ref_summator):
    """--compile_per numa_node: the shards of a node share one compiled copy of each model (one
    CPU stream per shard). Sequences owned by both shards, batched and not, equal in-process
    OpenVINO (memory and per-infer cost of this mode: tuning/README.md)."""
    s = start_server(args=["--compile_per", "numa_node"],
                     config=[cfg("lstm"), cfg("summator", max_batch_size=2, max_queue_delay_us=1000)], cores=2)
    assert "compiled once per NUMA node" in s.stderr_text()
    runs = []
    for k in range(6):
        steps = feature_steps(6, seed=900 + k)
        runs.append(SeqRun(s.stub, "lstm", 9300 + k, steps, ref_lstm.run_sequence(steps), "scores", LSTM_ATOL))
        steps = summator_steps(6, seed=950 + k)
        runs.append(SeqRun(s.stub, "summator", 9400 + k, steps, ref_summator.run_sequence(steps), "add_sum", 0.0))
    assert {shard_of(r.sid, 2) for r in runs} == {0, 1}
    run_threads(lambda r: [r.step() for _ in r.steps], [(r,) for r in runs])
    for sh in s.stats()["shards"]:
        for m in sh["models"]:
            assert m["live_sequences"] == 0 and m["failed"] == 0, m


def test_interleaved_lstm_concurrent_threads(srv, ref_lstm):
    """8 lstm sequences, each in its own thread at the same time, on 2 connections."""
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(srv.new_channel()) for _ in range(2)]
    runs = []
    for k in range(8):
        steps = feature_steps(15, seed=300 + k)
        runs.append(SeqRun(stubs[k % 2], "lstm", 8200 + k, steps, ref_lstm.run_sequence(steps), "scores", LSTM_ATOL))

    def drive(r):
        while not r.done():
            r.step()
        return True

    assert run_threads(drive, [(r,) for r in runs]) == [True] * 8


def test_ovms_own_summator(start_server):
    ovms_dir = require_ovms_summator()
    s = start_server(args=["--model_name", "summator", "--model_path", str(ovms_dir), "--stateful",
                           "--plugin_config", json.dumps(F32)])
    ref = Reference(ovms_dir / "1" / "summator.xml", config=F32)
    # the spec §4.1 exchange first
    r = predict_ok(s.stub, summator_request(1.0, seq_id=42, control=START))
    assert response_seq_id(r) == 42 and summator_out(r) == 1.0
    r = predict_ok(s.stub, summator_request(2.0, seq_id=42))
    assert summator_out(r) == 3.0
    r = predict_ok(s.stub, summator_request(3.5, seq_id=42, control=END))
    assert summator_out(r) == 6.5
    assert predict_err(s.stub, summator_request(1.0, seq_id=42)) == (grpc.StatusCode.NOT_FOUND, MSG_MISSING)
    # then interleaved sequences against the reference
    runs = []
    for k in range(8):
        steps = summator_steps(10 + k, seed=400 + k)
        runs.append(SeqRun(s.stub, "summator", 900 + k, steps, ref.run_sequence(steps), "add_sum", 0.0))
    while any(not r.done() for r in runs):
        for r in runs:
            if not r.done():
                r.step()


# ============================================================================================
# (2) many interleaved sequences over several connections
# ============================================================================================


def test_two_hundred_sequences_four_connections(srv):
    n_seq, n_conn, n_threads = 200, 4, 8
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(srv.new_channel()) for _ in range(n_conn)]
    base_live = srv.live_sequences("summator")

    def worker(t):
        mine = list(range(t, n_seq, n_threads))  # 25 sequences per thread
        state = {}
        for k in mine:
            state[k] = {"sid": 20_000 + k, "n": 4 + k % 9, "pos": 0, "sum": 0.0}
        while any(s["pos"] < s["n"] for s in state.values()):
            for k, s in state.items():
                if s["pos"] >= s["n"]:
                    continue
                v = float((k * 7 + s["pos"] * 3) % 19 - 9)
                stub = stubs[(k + s["pos"]) % n_conn]  # a sequence's requests move between connections
                resp = predict_ok(stub, summator_request(v, seq_id=s["sid"], control=control_for(s["pos"], s["n"])))
                s["sum"] += v
                assert response_seq_id(resp) == s["sid"]
                assert summator_out(resp) == s["sum"], f"sequence {s['sid']} step {s['pos']}"
                s["pos"] += 1
        return len(mine)

    assert sum(run_threads(worker, [(t,) for t in range(n_threads)], timeout=120)) == n_seq
    assert wait_until(lambda: srv.live_sequences("summator") == base_live, 5)


# ============================================================================================
# (3) routing across shards
# ============================================================================================


def test_routing_each_sequence_lives_on_one_shard(start_server):
    s = start_server(config=[cfg("summator")], cores=2)
    stats = s.stats()
    assert len(stats["shards"]) == 2
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(s.new_channel()) for _ in range(4)]
    sent = {}
    sums = {}
    # 20 client-chosen ids and 20 server-assigned ones; k = 2..10 requests before END
    for i in range(40):
        k = 2 + i % 9
        stub = stubs[i % 4]
        if i < 20:
            sid = 31_000 + 17 * i
            r = predict_ok(stub, summator_request(1.0, seq_id=sid, control=START))
        else:
            r = predict_ok(stub, summator_request(1.0, control=START))
            sid = response_seq_id(r)
        assert response_seq_id(r) == sid and sid not in sent
        sent[sid] = 1
        sums[sid] = 1.0
        for j in range(1, k):
            r = predict_ok(stubs[(i + j) % 4], summator_request(1.0, seq_id=sid))
            sent[sid] += 1
            sums[sid] += 1.0
            assert summator_out(r) == sums[sid]
    stats = s.stats()
    placed = sequences_by_shard(stats, "summator")
    seen = {}
    for shard, seqs in placed.items():
        for sid, steps in seqs.items():
            assert sid not in seen, f"sequence {sid} on shards {seen[sid]} and {shard}"
            seen[sid] = shard
            assert sid in sent, f"unknown sequence {sid} on shard {shard}"
            assert steps == sent[sid], f"sequence {sid} on shard {shard}: steps {steps}, sent {sent[sid]}"
    assert set(seen) == set(sent), f"missing from stats: {set(sent) - set(seen)}"
    assert len([sh for sh, seqs in placed.items() if seqs]) == 2, f"not both shards used: {placed}"
    live = {sh["shard"]: sum(m["live_sequences"] for m in sh["models"]) for sh in stats["shards"]}
    assert live == {sh: len(placed.get(sh, {})) for sh in live}
    assert sum(sh["forwarded_out"] for sh in stats["shards"]) > 0
    assert sum(sh["forwarded_in"] for sh in stats["shards"]) > 0
    for sid in sent:
        r = predict_ok(stubs[sid % 4], summator_request(1.0, seq_id=sid, control=END))
        assert summator_out(r) == sums[sid] + 1.0
    assert s.live_sequences("summator") == 0


# ============================================================================================
# (4) idle timeouts
# ============================================================================================


def test_idle_timeout(start_server):
    s = start_server(config=[cfg("summator", sequence_timeout_seconds=1),
                             cfg("keep", model="summator", sequence_timeout_seconds=1, idle_sequence_cleanup=False)])
    # a second server with the cleaner disabled server-wide
    s_off = start_server(config=[cfg("summator", sequence_timeout_seconds=1)],
                         args=["--sequence_cleaner_poll_wait_minutes", "0"], label="cleaner-off")
    for srv_, model, sid in ((s, "summator", 1), (s, "summator", 2), (s, "keep", 3), (s_off, "summator", 4)):
        r = predict_ok(srv_.stub, summator_request(1.0, seq_id=sid, control=START, model=model))
        assert response_seq_id(r) == sid
    busy_sum = 1.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:  # sequence 2 busy every 0.3 s; 1, 3, 4 idle
        time.sleep(0.3)
        r = predict_ok(s.stub, summator_request(1.0, seq_id=2))
        busy_sum += 1.0
        assert summator_out(r) == busy_sum, "the busy sequence lost its state"
    # idle > 2.5 s with a 1 s timeout: gone
    assert predict_err(s.stub, summator_request(1.0, seq_id=1)) == (grpc.StatusCode.NOT_FOUND, MSG_MISSING)
    assert s.model_counter("summator", "expired") == 1
    r = predict_ok(s.stub, summator_request(1.0, seq_id=2, control=END))
    assert summator_out(r) == busy_sum + 1.0
    # idle_sequence_cleanup false: survives with its state
    r = predict_ok(s.stub, summator_request(1.0, seq_id=3, control=END, model="keep"))
    assert summator_out(r) == 2.0
    assert s.model_counter("keep", "expired") == 0
    # cleaner disabled server-wide: survives too
    r = predict_ok(s_off.stub, summator_request(1.0, seq_id=4, control=END))
    assert summator_out(r) == 2.0
    assert s_off.model_counter("summator", "expired") == 0
    # the expired id is free again
    r = predict_ok(s.stub, summator_request(5.0, seq_id=1, control=START))
    assert summator_out(r) == 5.0
    predict_ok(s.stub, summator_request(0.0, seq_id=1, control=END))
    assert s.live_sequences("summator") == 0


# ============================================================================================
# (5) LowLatency2 on the TensorIterator model
# ============================================================================================


def test_low_latency_lstm_ti_equals_lstm(srv, ref_lstm):
    steps = feature_steps(20, seed=7)
    expected = ref_lstm.run_sequence(steps)
    for i, step in enumerate(steps):
        ctrl = control_for(i, len(steps))
        a = output_array(predict_ok(srv.stub, make_request("lstm", step, seq_id=9001, control=ctrl)), "scores")
        b = output_array(predict_ok(srv.stub, make_request("lstm_ti", step, seq_id=9001, control=ctrl)), "scores")
        np.testing.assert_allclose(b, a, rtol=0, atol=LSTM_ATOL, err_msg=f"lstm_ti vs lstm, step {i}")
        np.testing.assert_allclose(a, expected[i]["scores"], rtol=0, atol=LSTM_ATOL, err_msg=f"lstm, step {i}")
    # and the state is real: the sequence's later outputs differ from a fresh start on the same input
    assert not np.allclose(expected[-1]["scores"], ref_lstm.run_sequence([steps[-1]])[0]["scores"], atol=1e-4)
