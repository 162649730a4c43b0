"""OVMS stateful conformance checklist (spec §4.3, §1.4, §2.2, §2.3) through the gRPC API.

Every request goes over the wire with upstream's TF-Serving stubs.
"""

import threading

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from conftest import (
    END,
    NO_CONTROL,
    START,
    f32_tensor,
    f32_tensor_vals,
    make_request,
    model_dir,
    module_server,
    output_array,
    predict_err,
    predict_ok,
    response_seq_id,
    run_threads,
    shape_proto,
    shard_of,
    special_tensor,
    summator_out,
    summator_request,
    wait_until,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

MSG_ID_NOT_PROVIDED = "Sequence ID has not been provided in request inputs"
MSG_BAD_CONTROL = "Unexpected value of sequence control input"
MSG_ID_BAD_TYPE = "Could not find sequence id in expected tensor proto field uint64_val"
MSG_CONTROL_BAD_TYPE = "Could not find sequence control input in expected tensor proto field uint32_val"
MSG_NO_SHAPE = "Special input proto does not contain tensor shape information"
MSG_MISSING = "Sequence with provided ID does not exist"
MSG_EXISTS = "Sequence with provided ID already exists"
MSG_MAX = "Max sequence number has been reached. Could not create new sequence."


def summator_cfg(**extra):
    cfg = {"name": "summator", "base_path": str(model_dir("summator")), "stateful": True}
    cfg.update(extra)
    return cfg


def dummy_cfg():
    return {"name": "dummy", "base_path": str(model_dir("dummy"))}


@pytest.fixture(scope="module")
def srv(seqcore_bin, tmp_path_factory):
    """summator (stateful) + dummy (stateless), default shard count (all cores)."""
    s = module_server(seqcore_bin, tmp_path_factory, [summator_cfg(), dummy_cfg()], label="conformance")
    yield s
    s.stop()


_ids = iter(range(10_000, 1_000_000))
_ids_lock = threading.Lock()


def fresh_id() -> int:
    with _ids_lock:
        return next(_ids)


def start_seq(srv, value=1.0, seq_id=None):
    sid = seq_id if seq_id is not None else fresh_id()
    resp = predict_ok(srv.stub, summator_request(value, seq_id=sid, control=START))
    assert response_seq_id(resp) == sid
    return sid, resp


def end_seq(srv, sid, value=0.0):
    return predict_ok(srv.stub, summator_request(value, seq_id=sid, control=END))


def expect(srv, request, code, details):
    got = predict_err(srv.stub, request)
    assert got == (code, details), f"expected {(code, details)}, got {got}"


# ============================================================================================
# Request parsing / validation of the special inputs
# ============================================================================================


def test_start_middle_end_valid_and_echo_id(srv):
    sid = fresh_id()
    r = predict_ok(srv.stub, summator_request(1.0, seq_id=sid, control=START))
    assert response_seq_id(r) == sid and summator_out(r) == 1.0
    r = predict_ok(srv.stub, summator_request(2.0, seq_id=sid, control=NO_CONTROL))
    assert response_seq_id(r) == sid and summator_out(r) == 3.0
    r = predict_ok(srv.stub, summator_request(4.0, seq_id=sid))  # control omitted
    assert response_seq_id(r) == sid and summator_out(r) == 7.0
    r = predict_ok(srv.stub, summator_request(3.5, seq_id=sid, control=END))
    assert response_seq_id(r) == sid and summator_out(r) == 10.5
    # outputs: exactly the model output plus sequence_id; model output in tensor_content
    assert set(r.outputs.keys()) == {"add_sum", "sequence_id"}
    assert r.outputs["add_sum"].tensor_content and r.outputs["add_sum"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in r.outputs["add_sum"].tensor_shape.dim] == [1, 1]
    expect(srv, summator_request(1.0, seq_id=sid), NOT_FOUND, MSG_MISSING)


@pytest.mark.parametrize("variant", ["end_no_id", "end_id0", "no_control_id0", "no_special_inputs",
                                     "wrong_key_sequenceid", "control0_only"])
def test_sequence_id_not_provided(srv, variant):
    if variant == "end_no_id":
        req = summator_request(1.0, control=END)
    elif variant == "end_id0":
        req = summator_request(1.0, seq_id=0, control=END)
    elif variant == "no_control_id0":
        req = summator_request(1.0, seq_id=0, control=NO_CONTROL)
    elif variant == "no_special_inputs":
        req = summator_request(1.0)
    elif variant == "wrong_key_sequenceid":
        req = summator_request(1.0, raw_inputs={"sequenceid": special_tensor("sequence_id", [7])})
    else:
        req = summator_request(1.0, control=NO_CONTROL)
    expect(srv, req, INVALID, MSG_ID_NOT_PROVIDED)


@pytest.mark.parametrize("control", [3, 99, 999, 2**32 - 1])
@pytest.mark.parametrize("with_id", [False, True])
def test_invalid_control_value(srv, control, with_id):
    req = summator_request(1.0, seq_id=fresh_id() if with_id else None, control=control)
    # checked before the id, so it wins over a missing id too
    expect(srv, req, INVALID, MSG_BAD_CONTROL)


def test_sequence_id_bad_type(srv):
    sid = fresh_id()
    for bad in (
        special_tensor("sequence_id", [sid], field="uint32_val"),
        special_tensor("sequence_id", [sid], field="int64_val"),
        special_tensor("sequence_id", [sid, sid], field="uint64_val"),  # two values, shape [1]
        special_tensor("sequence_id", [], field="uint64_val"),  # no value
    ):
        req = summator_request(1.0, control=START, raw_inputs={"sequence_id": bad})
        expect(srv, req, INVALID, MSG_ID_BAD_TYPE)
    # nothing was created
    expect(srv, summator_request(1.0, seq_id=sid), NOT_FOUND, MSG_MISSING)


def test_control_bad_type(srv):
    sid = fresh_id()
    for bad in (
        special_tensor("sequence_control_input", [START], field="uint64_val"),
        special_tensor("sequence_control_input", [START], field="int_val"),
        special_tensor("sequence_control_input", [START, START], field="uint32_val"),
        special_tensor("sequence_control_input", [], field="uint32_val"),
    ):
        req = summator_request(1.0, seq_id=sid, raw_inputs={"sequence_control_input": bad})
        expect(srv, req, INVALID, MSG_CONTROL_BAD_TYPE)
    expect(srv, summator_request(1.0, seq_id=sid), NOT_FOUND, MSG_MISSING)


@pytest.mark.parametrize("name", ["sequence_id", "sequence_control_input"])
def test_special_input_shapes(srv, name):
    sid = fresh_id()
    value = sid if name == "sequence_id" else START

    def req_with(t):
        other = {"control": START} if name == "sequence_id" else {"seq_id": sid}
        return summator_request(1.0, raw_inputs={name: t}, **other)

    expect(srv, req_with(special_tensor(name, [value], shape=False)), INVALID, MSG_NO_SHAPE)
    expect(srv, req_with(special_tensor(name, [value], dims=(1, 1))), INVALID,
           f"Invalid number of shape dimensions - Required shape for {name} is: (1)")
    expect(srv, req_with(special_tensor(name, [value], dims=(2,))), INVALID,
           f"Invalid input shape - Required shape for {name} is: (1)")
    expect(srv, req_with(special_tensor(name, [value, value], dims=(2,))), INVALID,
           f"Invalid input shape - Required shape for {name} is: (1)")
    expect(srv, summator_request(1.0, seq_id=sid), NOT_FOUND, MSG_MISSING)


def test_big_sequence_id_accepted(srv):
    sid = 5_000_000_000
    r = predict_ok(srv.stub, summator_request(2.0, seq_id=sid, control=START))
    assert response_seq_id(r) == sid and summator_out(r) == 2.0
    r = predict_ok(srv.stub, summator_request(3.0, seq_id=sid))
    assert response_seq_id(r) == sid and summator_out(r) == 5.0
    r = predict_ok(srv.stub, summator_request(1.0, seq_id=sid, control=END))
    assert response_seq_id(r) == sid and summator_out(r) == 6.0
    big = 2**64 - 1
    r = predict_ok(srv.stub, summator_request(1.0, seq_id=big, control=START))
    assert response_seq_id(r) == big
    end_seq(srv, big)


def test_tensor_content_special_inputs_accepted(srv):
    sid = fresh_id()
    raw = {"sequence_id": special_tensor("sequence_id", [sid], field="tensor_content"),
           "sequence_control_input": special_tensor("sequence_control_input", [START], field="tensor_content")}
    r = predict_ok(srv.stub, summator_request(1.5, raw_inputs=raw))
    assert response_seq_id(r) == sid and summator_out(r) == 1.5
    r = predict_ok(srv.stub, summator_request(
        2.0, raw_inputs={"sequence_id": special_tensor("sequence_id", [sid], field="tensor_content")}))
    assert response_seq_id(r) == sid and summator_out(r) == 3.5
    raw["sequence_control_input"] = special_tensor("sequence_control_input", [END], field="tensor_content")
    r = predict_ok(srv.stub, summator_request(0.5, raw_inputs=raw))
    assert response_seq_id(r) == sid and summator_out(r) == 4.0
    expect(srv, summator_request(1.0, seq_id=sid), NOT_FOUND, MSG_MISSING)


def test_scalar_special_inputs_accepted(srv):
    sid = fresh_id()
    raw = {"sequence_id": special_tensor("sequence_id", [sid], shape="scalar"),
           "sequence_control_input": special_tensor("sequence_control_input", [START], shape="scalar")}
    # the shape field is present (no dims) on the wire, not absent
    assert raw["sequence_id"].HasField("tensor_shape")
    r = predict_ok(srv.stub, summator_request(1.0, raw_inputs=raw))
    assert response_seq_id(r) == sid and summator_out(r) == 1.0
    r = predict_ok(srv.stub, summator_request(
        1.0, raw_inputs={"sequence_id": special_tensor("sequence_id", [sid], shape="scalar")}))
    assert summator_out(r) == 2.0
    raw["sequence_control_input"] = special_tensor("sequence_control_input", [END], shape="scalar")
    r = predict_ok(srv.stub, summator_request(1.0, raw_inputs=raw))
    assert response_seq_id(r) == sid and summator_out(r) == 3.0


def test_float_val_model_input_accepted(srv):
    sid = fresh_id()
    r = predict_ok(srv.stub, make_request("summator", {"input": f32_tensor_vals([[2.5]])}, seq_id=sid, control=START))
    assert summator_out(r) == 2.5
    r = predict_ok(srv.stub, make_request("summator", {"input": f32_tensor_vals([[1.0]])}, seq_id=sid, control=END))
    assert summator_out(r) == 3.5


# ============================================================================================
# Model input validation (before any sequence is touched)
# ============================================================================================


def _bad_model_inputs():
    """(label, inputs dict, expected details) for the summator; special inputs added separately."""
    i64 = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=shape_proto([1, 1]),
                                 tensor_content=np.array([[1]], dtype=np.int64).tobytes())
    rank1 = f32_tensor(np.array([1.0], dtype=np.float32))
    shape12 = f32_tensor(np.array([[1.0, 2.0]], dtype=np.float32))
    content8 = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto([1, 1]),
                                      tensor_content=np.array([1.0, 2.0], dtype=np.float32).tobytes())
    vals2 = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto([1, 1]),
                                   float_val=[1.0, 2.0])
    good = f32_tensor(np.array([[1.0]], dtype=np.float32))
    return [
        ("extra_input", {"input": good, "foo": good}, "Invalid number of inputs - Expected: {n}; Actual: {m}"),
        ("missing_input", {"inputx": good}, "Missing input with specific name - Required input: input"),
        ("no_inputs", {}, "Invalid number of inputs - Expected: {n}; Actual: {k}"),
        ("dtype", {"input": i64}, "Invalid input precision - Expected: FP32; Actual: I64; input name: input"),
        ("rank", {"input": rank1},
         "Invalid number of shape dimensions - Expected: (1,1); Actual: (1); input name: input"),
        ("shape", {"input": shape12}, "Invalid input shape - Expected: (1,1); Actual: (1,2); input name: input"),
        ("content_size", {"input": content8},
         "Invalid content size of tensor proto - Expected: 4 bytes; Actual: 8 bytes; input name: input"),
        ("value_count", {"input": vals2},
         "Invalid number of values in tensor proto container - Expected: 1; Actual: 2; input name: input"),
    ]


@pytest.mark.parametrize("case", range(8), ids=[c[0] for c in _bad_model_inputs()])
def test_validation_error_mid_sequence_leaves_sequence_intact(srv, case):
    label, inputs, template = _bad_model_inputs()[case]
    sid, r = start_seq(srv, 1.0)
    assert summator_out(r) == 1.0
    # a middle request with a bad model input: 1 special input present
    n_special = 1
    details = template.format(n=1 + n_special, m=len(inputs) + n_special, k=n_special)
    expect(srv, make_request("summator", inputs, seq_id=sid), INVALID, details)
    # ... and as an END: 2 special inputs present; the END must not have ended the sequence
    details = template.format(n=1 + 2, m=len(inputs) + 2, k=2)
    expect(srv, make_request("summator", inputs, seq_id=sid, control=END), INVALID, details)
    r = predict_ok(srv.stub, summator_request(2.0, seq_id=sid))
    assert summator_out(r) == 3.0, f"state changed by a rejected request ({label})"
    r = end_seq(srv, sid, 4.0)
    assert summator_out(r) == 7.0


@pytest.mark.parametrize("case", range(8), ids=[c[0] for c in _bad_model_inputs()])
def test_validation_error_on_start_creates_nothing(srv, case):
    label, inputs, template = _bad_model_inputs()[case]
    sid = fresh_id()
    details = template.format(n=1 + 2, m=len(inputs) + 2, k=2)
    expect(srv, make_request("summator", inputs, seq_id=sid, control=START), INVALID, details)
    expect(srv, summator_request(1.0, seq_id=sid), NOT_FOUND, MSG_MISSING)
    start_seq(srv, 1.0, sid)
    end_seq(srv, sid)


def test_special_input_errors_come_before_model_validation(srv):
    # a request broken in both ways reports the special-input problem (spec §2.2 step 1 before 2)
    i64 = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=shape_proto([1, 1]), int64_val=[1])
    expect(srv, make_request("summator", {"input": i64}, control=99), INVALID, MSG_BAD_CONTROL)
    expect(srv, make_request("summator", {"input": i64}, control=END), INVALID, MSG_ID_NOT_PROVIDED)
    # ... and model validation comes before the sequence lookup
    expect(srv, make_request("summator", {"input": i64}, seq_id=fresh_id()), INVALID,
           "Invalid input precision - Expected: FP32; Actual: I64; input name: input")


# ============================================================================================
# Sequence manager behaviour
# ============================================================================================


def test_unique_ids_one_shard(start_server):
    s = start_server(config=[summator_cfg()], cores=1)
    stub = s.stub

    def auto_start(explicit_zero=False):
        r = predict_ok(stub, summator_request(1.0, seq_id=0 if explicit_zero else None, control=START))
        return response_seq_id(r)

    # §2.3: fresh → 1, then 2, 3
    assert auto_start() == 1
    assert auto_start() == 2
    assert auto_start(explicit_zero=True) == 3  # id 0 is the same as no id
    # the counter sits at 3: after END 3, 3 is handed out again
    end_seq(s, 3)
    assert auto_start() == 3
    # take 4 and 5 explicitly: the next auto id skips them
    start_seq(s, 1.0, 4)
    start_seq(s, 1.0, 5)
    assert auto_start() == 6
    # free 1 and 2: the counter (at 6) does not go back; 6 taken → 7
    end_seq(s, 1)
    end_seq(s, 2)
    assert auto_start() == 7
    # an assigned id is a real sequence: it continues and ends
    r = predict_ok(stub, summator_request(5.0, seq_id=7))
    assert response_seq_id(r) == 7 and summator_out(r) == 6.0
    for sid in (3, 4, 5, 6, 7):
        end_seq(s, sid)
    assert s.live_sequences("summator") == 0


def test_auto_ids_many_shards_are_unique(srv):
    got = []
    for _ in range(12):
        r = predict_ok(srv.stub, summator_request(1.0, control=START))
        got.append(response_seq_id(r))
    assert len(set(got)) == len(got) and 0 not in got
    for sid in got:
        r = predict_ok(srv.stub, summator_request(1.0, seq_id=sid, control=END))
        assert summator_out(r) == 2.0


def test_start_twice_already_exists(srv):
    sid, _ = start_seq(srv, 1.0)
    expect(srv, summator_request(5.0, seq_id=sid, control=START), grpc.StatusCode.ALREADY_EXISTS, MSG_EXISTS)
    # the existing sequence is untouched
    r = end_seq(srv, sid, 1.0)
    assert summator_out(r) == 2.0


def test_unknown_sequence_missing(srv):
    sid = fresh_id()
    expect(srv, summator_request(1.0, seq_id=sid, control=NO_CONTROL), NOT_FOUND, MSG_MISSING)
    expect(srv, summator_request(1.0, seq_id=sid, control=END), NOT_FOUND, MSG_MISSING)
    expect(srv, summator_request(1.0, seq_id=sid), NOT_FOUND, MSG_MISSING)


def test_end_then_end_missing(srv):
    sid, _ = start_seq(srv, 1.0)
    end_seq(srv, sid)
    expect(srv, summator_request(1.0, seq_id=sid, control=END), NOT_FOUND, MSG_MISSING)
    expect(srv, summator_request(1.0, seq_id=sid), NOT_FOUND, MSG_MISSING)


def test_max_sequence_number(start_server):
    s = start_server(config=[summator_cfg(max_sequence_number=5)], cores=1)
    ids = [101, 102, 103, 104, 105]
    for sid in ids:
        start_seq(s, 1.0, sid)
    unavailable = grpc.StatusCode.UNAVAILABLE
    expect(s, summator_request(1.0, seq_id=106, control=START), unavailable, MSG_MAX)
    expect(s, summator_request(1.0, control=START), unavailable, MSG_MAX)
    # the max check comes before the duplicate check
    expect(s, summator_request(1.0, seq_id=101, control=START), unavailable, MSG_MAX)
    # running sequences are unaffected
    r = predict_ok(s.stub, summator_request(1.0, seq_id=103))
    assert summator_out(r) == 2.0
    assert s.live_sequences("summator") == 5
    assert s.model_counter("summator", "rejected_max") == 3
    # after an END a new START succeeds, and the table is full again
    end_seq(s, 102)
    start_seq(s, 1.0, 106)
    expect(s, summator_request(1.0, seq_id=107, control=START), unavailable, MSG_MAX)
    # with room again, the duplicate check answers
    end_seq(s, 101)
    expect(s, summator_request(1.0, seq_id=103, control=START), grpc.StatusCode.ALREADY_EXISTS, MSG_EXISTS)
    for sid in (103, 104, 105, 106):
        end_seq(s, sid)
    assert s.live_sequences("summator") == 0


def test_max_sequence_number_exact_across_shards(start_server):
    s = start_server(config=[summator_cfg(max_sequence_number=20)], cores=2)
    assert len(s.stats()["shards"]) == 2
    # 40 candidate ids, 20 owned by each shard
    by_shard = {0: [], 1: []}
    i = 1000
    while min(len(v) for v in by_shard.values()) < 20:
        i += 1
        sh = shard_of(i, 2)
        if len(by_shard[sh]) < 20:
            by_shard[sh].append(i)
    candidates = [x for pair in zip(by_shard[0], by_shard[1]) for x in pair]
    # all 40 STARTs at once, from 40 threads over 4 connections
    channels = [s.new_channel() for _ in range(4)]
    from tensorflow_serving.apis import prediction_service_pb2_grpc as psg
    stubs = [psg.PredictionServiceStub(c) for c in channels]
    barrier = threading.Barrier(len(candidates))

    def go(k, sid):
        barrier.wait(timeout=30)
        r, err = None, None
        try:
            r = stubs[k % 4].Predict(summator_request(1.0, seq_id=sid, control=START), timeout=20)
        except grpc.RpcError as e:
            err = (e.code(), e.details())
        return sid, r, err

    results = run_threads(go, [(k, sid) for k, sid in enumerate(candidates)])
    ok = [sid for sid, r, err in results if err is None]
    errs = [err for _, r, err in results if err is not None]
    assert len(ok) == 20, f"{len(ok)} STARTs succeeded with max_sequence_number 20; errors {set(errs)}"
    assert all(e == (grpc.StatusCode.UNAVAILABLE, MSG_MAX) for e in errs), set(errs)
    assert s.live_sequences("summator") == 20
    # full: a START on either shard (and an auto START) is rejected
    expect(s, summator_request(1.0, seq_id=by_shard[0][-1] + 10_000_000, control=START),
           grpc.StatusCode.UNAVAILABLE, MSG_MAX)
    spare = {sh: [x for x in v if x not in ok] for sh, v in by_shard.items()}
    for sh in (0, 1):
        for sid in spare[sh][:1]:
            expect(s, summator_request(1.0, seq_id=sid, control=START), grpc.StatusCode.UNAVAILABLE, MSG_MAX)
    expect(s, summator_request(1.0, control=START), grpc.StatusCode.UNAVAILABLE, MSG_MAX)
    # ending one sequence frees exactly one place, whichever shard it was on
    end_seq(s, ok[0])
    other = [x for x in candidates if x not in ok]
    target = next(x for x in other if shard_of(x, 2) != shard_of(ok[0], 2))
    start_seq(s, 1.0, target)
    expect(s, summator_request(1.0, seq_id=other[-1] if other[-1] != target else other[0], control=START),
           grpc.StatusCode.UNAVAILABLE, MSG_MAX)
    for sid in ok[1:] + [target]:
        end_seq(s, sid)
    assert s.live_sequences("summator") == 0


# ============================================================================================
# Inference flow
# ============================================================================================


def test_hundred_request_sequence(srv):
    sid, r = start_seq(srv, 1.0)
    total = 1.0
    for i in range(2, 100):
        r = predict_ok(srv.stub, summator_request(float(i), seq_id=sid))
        total += i
        assert response_seq_id(r) == sid and summator_out(r) == total
    r = end_seq(srv, sid, 100.0)
    assert summator_out(r) == total + 100.0 == 5050.0
    expect(srv, summator_request(1.0, seq_id=sid), NOT_FOUND, MSG_MISSING)


def test_sixty_concurrent_sequences(start_server):
    s = start_server(config=[summator_cfg()])
    n, steps, half = 60, 25, 12
    mid = threading.Barrier(n + 1)
    resume = threading.Event()

    def worker(k):
        sid = 50_000 + k
        total = 0.0
        for step in range(steps):
            v = float(k + step)
            ctrl = START if step == 0 else END if step == steps - 1 else None
            r = predict_ok(s.stub, summator_request(v, seq_id=sid, control=ctrl))
            total += v
            assert response_seq_id(r) == sid
            assert summator_out(r) == total, f"sequence {sid} step {step}"
            if step == half:
                mid.wait(timeout=60)
                assert resume.wait(timeout=60)
        return True

    threads_done = []
    t = threading.Thread(target=lambda: threads_done.append(run_threads(worker, [(k,) for k in range(n)])),
                         daemon=True)
    t.start()
    try:
        mid.wait(timeout=60)
        live_mid = s.live_sequences("summator")
    finally:
        resume.set()
    t.join(120)
    assert threads_done == [[True] * n], "some workers failed"
    assert live_mid == n
    assert wait_until(lambda: s.live_sequences("summator") == 0, 5)
    assert s.model_counter("summator", "started") == n
    assert s.model_counter("summator", "ended") == n
    # Every step spent some time in OpenVINO, and it is counted (the benchmark relies on it).
    steps = s.model_counter("summator", "steps")
    assert steps >= 2 * n
    assert s.model_counter("summator", "openvino_ns") >= steps * 100


# ============================================================================================
# State handling
# ============================================================================================


def test_start_resets_state(srv):
    sid, _ = start_seq(srv, 5.0)
    predict_ok(srv.stub, summator_request(5.0, seq_id=sid))
    r = end_seq(srv, sid, 5.0)
    assert summator_out(r) == 15.0
    # same id again: starts from 0, not from 15
    _, r = start_seq(srv, 1.0, sid)
    assert summator_out(r) == 1.0
    r = end_seq(srv, sid, 1.0)
    assert summator_out(r) == 2.0


def test_auto_id_reuse_starts_from_zero(start_server):
    s = start_server(config=[summator_cfg()], cores=1)
    r = predict_ok(s.stub, summator_request(10.0, control=START))
    sid = response_seq_id(r)
    r = predict_ok(s.stub, summator_request(10.0, seq_id=sid, control=END))
    assert summator_out(r) == 20.0
    r = predict_ok(s.stub, summator_request(1.0, control=START))
    assert response_seq_id(r) == sid  # reused (§2.3)
    assert summator_out(r) == 1.0
    end_seq(s, sid)


def test_interleaved_sequences(srv):
    a, _ = start_seq(srv, 1.0)
    b, _ = start_seq(srv, 10.0)
    c, _ = start_seq(srv, 100.0)
    sums = {a: 1.0, b: 10.0, c: 100.0}
    for step in range(1, 10):
        for sid, base in ((a, 1.0), (b, 10.0), (c, 100.0)):
            v = base * (step + 1)
            r = predict_ok(srv.stub, summator_request(v, seq_id=sid))
            sums[sid] += v
            assert summator_out(r) == sums[sid]
    for sid in (c, a, b):
        r = end_seq(srv, sid, 0.0)
        assert summator_out(r) == sums[sid]


def test_failed_request_is_not_state_change(srv):
    sid, _ = start_seq(srv, 1.0)
    predict_ok(srv.stub, summator_request(2.0, seq_id=sid))
    i64 = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=shape_proto([1, 1]), int64_val=[100])
    expect(srv, make_request("summator", {"input": i64}, seq_id=sid), INVALID,
           "Invalid input precision - Expected: FP32; Actual: I64; input name: input")
    expect(srv, summator_request(100.0, seq_id=sid, control=START), grpc.StatusCode.ALREADY_EXISTS, MSG_EXISTS)
    r = predict_ok(srv.stub, summator_request(3.0, seq_id=sid))
    assert summator_out(r) == 6.0
    r = end_seq(srv, sid, 4.0)
    assert summator_out(r) == 10.0


# ============================================================================================
# Metadata, status, stateless model, unknown model/version
# ============================================================================================


def test_model_metadata_hides_special_inputs(srv):
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "summator"
    req.metadata_field.append("signature_def")
    resp = srv.stub.GetModelMetadata(req, timeout=10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sig_map)
    assert list(sig_map.signature_def.keys()) == ["serving_default"]
    sig = sig_map.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert set(sig.inputs.keys()) == {"input"}
    assert set(sig.outputs.keys()) == {"add_sum"}
    assert sig.inputs["input"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in sig.inputs["input"].tensor_shape.dim] == [1, 1]
    assert [d.size for d in sig.outputs["add_sum"].tensor_shape.dim] == [1, 1]
    assert resp.model_spec.name == "summator"


def test_model_status(srv):
    for name in ("summator", "dummy"):
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = name
        resp = srv.model_stub.GetModelStatus(req, timeout=10)
        assert len(resp.model_version_status) == 1
        st = resp.model_version_status[0]
        assert st.version == 1
        assert st.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert st.status.error_code == 0


def test_stateless_dummy(srv):
    x = np.arange(10, dtype=np.float32).reshape(1, 10)
    for _ in range(3):  # no state: the same answer every time
        r = predict_ok(srv.stub, make_request("dummy", {"b": x}))
        np.testing.assert_array_equal(output_array(r, "a"), x + 1)
        assert "sequence_id" not in r.outputs


def test_unknown_model_and_version(srv):
    expect(srv, summator_request(1.0, seq_id=1, control=START, model="nosuchmodel"), NOT_FOUND,
           "Model with requested name is not found")
    expect(srv, summator_request(1.0, seq_id=fresh_id(), control=START, version=2), NOT_FOUND,
           "Model with requested version is not found")
    # version 1 named explicitly works
    sid = fresh_id()
    r = predict_ok(srv.stub, summator_request(1.0, seq_id=sid, control=START, version=1))
    assert response_seq_id(r) == sid
    end_seq(srv, sid)
    expect(srv, make_request("dummy", {"b": np.zeros((1, 10), np.float32)}, version=3), NOT_FOUND,
           "Model with requested version is not found")
