//! End-to-end tests of the gRPC layer: a glommio executor thread serves an echo handler, and
//! upstream's own generated TF-Serving stubs (Python grpcio + `tensorflow-serving-client-grpc`
//! from the project venv) call it, which checks wire compatibility as well as behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // test code: a broken assumption should fail loudly

use bytes::Bytes;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use prost::Message;
use seqcore::grpc::{serve, Code, Handler, Limits, Owner, Reply, Status};
use seqcore::proto::tensorflow::serving::{PredictRequest, PredictResponse};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

/// Predict echoes the inputs as outputs (and the model spec); `/test.Test/Sleep` answers after a
/// timer (a handler that really waits); `/test.Test/Fail` fails with a message that needs
/// percent-encoding; anything else is UNIMPLEMENTED. `/test.Test/Stream` is bidirectional
/// streaming: each message is echoed (after a timer if it starts with "sleep"), "fail" ends the
/// stream with a status; `/test.Test/Count` answers how many stream messages were handled;
/// `/test.Test/Owned` echoes with an owner shard (3 of 4) in the reply.
struct Echo;

thread_local! {
    static STREAMED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Echo {
    async fn answer(&self, method: &str, message: Bytes) -> Result<Bytes, Status> {
        match method {
            "/tensorflow.serving.PredictionService/Predict" => {
                let request = PredictRequest::decode(message)
                    .map_err(|e| Status::invalid_argument(format!("bad PredictRequest: {e}")))?;
                let response = PredictResponse { model_spec: request.model_spec, outputs: request.inputs };
                Ok(response.encode_to_vec().into())
            }
            "/test.Test/Sleep" => {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                Ok(message)
            }
            "/test.Test/Fail" => Err(Status::new(Code::FailedPrecondition, "µ-state 100% gone\nline 2")),
            "/test.Test/Count" => Ok(Bytes::from(STREAMED.with(|c| c.get()).to_string())),
            "/test.Test/Panic" => panic!("injected panic in a handler"),
            _ => Err(Status::unknown_method(method)),
        }
    }
}

impl Handler for Echo {
    async fn call(&self, method: &str, message: Bytes) -> Result<Reply, Status> {
        if method == "/test.Test/Owned" {
            return Ok(Reply { message, owner: Some(Owner { shard: 3, shards: 4 }) });
        }
        self.answer(method, message).await.map(Reply::from)
    }

    fn is_streaming(&self, method: &str) -> bool {
        method == "/test.Test/Stream"
    }

    async fn call_stream(&self, _method: &str, message: Bytes) -> Result<Bytes, Status> {
        STREAMED.with(|c| c.set(c.get() + 1));
        if message.starts_with(b"sleep") {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        if &message[..] == b"fail" {
            return Err(Status::new(Code::Aborted, "stream failed on request"));
        }
        Ok(message)
    }
}

fn start_server(limits: Limits) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    // Detached: the executor thread lives until the test process exits.
    let _ = LocalExecutorBuilder::new(Placement::Unbound)
        .name("grpc-test")
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            tx.send(listener.local_addr().expect("local_addr")).unwrap();
            let err = serve(listener, Rc::new(Echo), limits, None).await;
            panic!("serve ended: {err}");
        })
        .expect("start executor");
    rx.recv_timeout(Duration::from_secs(10)).expect("server address")
}

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "{} is missing; run scripts/setup.sh", p.display());
    p
}

/// Runs `script` (after a common prelude) with the server address as `ADDR`; the script must
/// print "OK" last.
fn run_python(addr: SocketAddr, script: &str) -> String {
    const PRELUDE: &str = r#"
import sys, grpc, numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
ADDR = sys.argv[1]
channel = grpc.insecure_channel(ADDR, options=[("grpc.max_receive_message_length", 256 << 20)])
stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

def tensor(values, shape):
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    t.tensor_shape.dim.extend([tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape])
    t.tensor_content = np.asarray(values, dtype=np.float32).tobytes()
    return t

def request(name, inputs):
    r = predict_pb2.PredictRequest()
    r.model_spec.name = name
    r.model_spec.version.value = 7
    for k, v in inputs.items():
        r.inputs[k].CopyFrom(v)
    return r

def expect_error(fn, code, needle):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        assert needle in e.details(), e.details()
        return e
    raise AssertionError("expected " + str(code))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(format!("{PRELUDE}\n{script}"))
        .arg(addr.to_string())
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.lines().last(), Some("OK"), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

#[test]
fn predict_roundtrip_with_upstream_stubs() {
    let addr = start_server(Limits::default());
    run_python(
        addr,
        r#"
req = request("lstm", {
    "x": tensor([1.5, -2.0, 3.25, 0.0], [1, 4]),
    "state": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[9.0, 8.0]),
    "seq_id": tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT64, uint64_val=[2**64 - 1]),
    "name": tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"\x00\xffbytes"]),
    "half": tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF, half_val=[15360]),
})
resp = stub.Predict(req, timeout=10)
assert resp.model_spec.name == "lstm" and resp.model_spec.version.value == 7, resp.model_spec
assert set(resp.outputs) == set(req.inputs), resp.outputs.keys()
for k in req.inputs:
    assert resp.outputs[k] == req.inputs[k], k
x = np.frombuffer(resp.outputs["x"].tensor_content, dtype=np.float32)
assert x.tolist() == [1.5, -2.0, 3.25, 0.0], x
assert [d.size for d in resp.outputs["x"].tensor_shape.dim] == [1, 4]

# An empty request message is a valid (empty) PredictRequest.
assert stub.Predict(predict_pb2.PredictRequest(), timeout=10) == predict_pb2.PredictResponse()

# A large tensor (8 MiB): many DATA frames each way, flow control both ways.
big = np.arange(2 << 20, dtype=np.float32)
resp = stub.Predict(request("big", {"x": tensor(big, [2 << 20])}), timeout=30)
assert np.array_equal(np.frombuffer(resp.outputs["x"].tensor_content, dtype=np.float32), big)

# Also callable as application/grpc+proto? grpcio always sends application/grpc; fine.
print("OK")
"#,
    );
}

#[test]
fn errors_unknown_method_handler_status_and_compression() {
    let addr = start_server(Limits::default());
    run_python(
        addr,
        r#"
nope = channel.unary_unary("/tensorflow.serving.PredictionService/Nope")
expect_error(lambda: nope(b"", timeout=10), grpc.StatusCode.UNIMPLEMENTED,
             "/tensorflow.serving.PredictionService/Nope")
other = channel.unary_unary("/tensorflow.serving.ModelService/GetModelStatus")
expect_error(lambda: other(b"", timeout=10), grpc.StatusCode.UNIMPLEMENTED, "GetModelStatus")

# A handler's status, with a message that needs percent-encoding, arrives intact.
fail = channel.unary_unary("/test.Test/Fail")
e = expect_error(lambda: fail(b"x", timeout=10), grpc.StatusCode.FAILED_PRECONDITION, "")
assert e.details() == "µ-state 100% gone\nline 2", repr(e.details())

# A handler that panics fails its call with INTERNAL; the connection and the shard serve on.
boom = channel.unary_unary("/test.Test/Panic")
expect_error(lambda: boom(b"x", timeout=10), grpc.StatusCode.INTERNAL, "the handler failed")
assert stub.Predict(predict_pb2.PredictRequest(), timeout=10) == predict_pb2.PredictResponse()

# Garbage that is not a PredictRequest: the handler's INVALID_ARGUMENT.
raw_predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
expect_error(lambda: raw_predict(b"\xff\xff\xff", timeout=10), grpc.StatusCode.INVALID_ARGUMENT,
             "bad PredictRequest")

# Compressed requests are refused.
req = request("m", {"x": tensor([1.0] * 1000, [1000])})
expect_error(lambda: stub.Predict(req, timeout=10, compression=grpc.Compression.Gzip),
             grpc.StatusCode.UNIMPLEMENTED, "compression is not supported")

# The connection is still fine afterwards.
assert stub.Predict(req, timeout=10).outputs["x"] == req.inputs["x"]

# An answer that names its owner shard carries it as response metadata; others do not.
owned = channel.unary_unary("/test.Test/Owned")
answer, call = owned.with_call(b"abc", timeout=10)
assert answer == b"abc"
meta = dict(call.initial_metadata())
assert (meta.get("seqcore-shard"), meta.get("seqcore-shards")) == ("3", "4"), meta
_, call = stub.Predict.with_call(req, timeout=10)
assert "seqcore-shard" not in dict(call.initial_metadata())
print("OK")
"#,
    );
}

#[test]
fn message_over_the_limit_is_resource_exhausted() {
    let addr = start_server(Limits { message_bytes_max: 1 << 20, ..Limits::default() });
    run_python(
        addr,
        r#"
ok = request("m", {"x": tensor(np.zeros(200_000), [200_000])})      # ~800 KB: under 1 MiB
assert stub.Predict(ok, timeout=10).outputs["x"] == ok.inputs["x"]

big = request("m", {"x": tensor(np.zeros(16 << 20), [16 << 20])})  # 64 MiB: over
e = expect_error(lambda: stub.Predict(big, timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED,
                 "message_bytes_max = 1048576 bytes")
assert str(big.ByteSize()) in e.details(), e.details()

# Just over the limit, in a single DATA frame or a few.
edge = channel.unary_unary("/test.Test/Sleep")
expect_error(lambda: edge(b"\0" * ((1 << 20) + 1), timeout=10), grpc.StatusCode.RESOURCE_EXHAUSTED,
             "message_bytes_max")
assert edge(b"\0" * (1 << 20), timeout=10) == b"\0" * (1 << 20)

# The same connection keeps working.
assert stub.Predict(ok, timeout=10).outputs["x"] == ok.inputs["x"]
print("OK")
"#,
    );
}

#[test]
fn many_concurrent_calls_on_one_connection() {
    // Fewer streams than calls, so the client also queues on SETTINGS_MAX_CONCURRENT_STREAMS.
    let addr = start_server(Limits { streams_max: 64, ..Limits::default() });
    run_python(
        addr,
        r#"
N = 1000
reqs = [request("m%d" % i, {"x": tensor([float(i), float(-i)], [2]),
                            "pad": tensor(np.full(i % 50, i), [i % 50])}) for i in range(N)]
futs = [stub.Predict.future(r, timeout=60) for r in reqs]
sleep = channel.unary_unary("/test.Test/Sleep")
slow = [sleep.future(b"call %d" % i, timeout=60) for i in range(200)]
for i, (r, f) in enumerate(zip(reqs, futs)):
    resp = f.result()
    assert resp.model_spec.name == "m%d" % i, (i, resp.model_spec.name)
    assert resp.outputs["x"] == r.inputs["x"] and resp.outputs["pad"] == r.inputs["pad"], i
for i, f in enumerate(slow):
    assert f.result() == b"call %d" % i, i
print("OK")
"#,
    );
}

#[test]
fn streams_answer_in_order_end_with_status_and_apply_backpressure() {
    let addr = start_server(Limits::default());
    run_python(
        addr,
        r#"
import threading, time
stream = channel.stream_stream("/test.Test/Stream")

# Answers in request order, a waiting handler included; the client's end of stream ends the
# call with OK.
msgs = [(b"sleep %d" if i % 10 == 0 else b"m %d") % i for i in range(2000)]
assert list(stream(iter(msgs), timeout=60)) == msgs

# Empty messages and a stream without messages.
assert list(stream(iter([b"", b"x", b""]), timeout=10)) == [b"", b"x", b""]
assert list(stream(iter([]), timeout=10)) == []

# A handler error ends the stream with its status, after the answers before it.
got = []
try:
    for m in stream(iter([b"a", b"b", b"fail", b"c"]), timeout=10):
        got.append(m)
    raise AssertionError("expected an error")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.ABORTED and e.details() == "stream failed on request", e
assert got == [b"a", b"b"], got

# A client that does not read its answers stops its stream: the server handles only what fits
# in the flow-control windows, then everything once the client reads.
count = channel.unary_unary("/test.Test/Count")
before = int(count(b"", timeout=10))
N, big = 2000, b"\1" * (64 << 10)   # 125 MiB each way
sent = []
def requests():
    for i in range(N):
        sent.append(i)
        yield big
answers = stream(requests(), timeout=120)
time.sleep(1.0)
handled = int(count(b"", timeout=10)) - before
assert 0 < handled < N // 4, (handled, len(sent))
assert len(sent) < N // 2, len(sent)
n = sum(1 for a in answers if len(a) == len(big))
assert n == N, n
assert int(count(b"", timeout=10)) - before == N
print("OK")
"#,
    );
}

#[test]
fn connections_past_the_limit_are_closed() {
    let addr = start_server(Limits { connections_max: 1, ..Limits::default() });
    let first = std::net::TcpStream::connect(addr).unwrap();
    // Give the accept loop time to count the first connection.
    std::thread::sleep(Duration::from_millis(100));
    let mut second = std::net::TcpStream::connect(addr).unwrap();
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    match second.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("second connection got {n} bytes instead of being closed"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // Once the first one closes, a new connection is served again.
    drop(first);
    std::thread::sleep(Duration::from_millis(100));
    run_python(
        addr,
        r#"
r = request("m", {"x": tensor([1.0], [1])})
assert stub.Predict(r, timeout=10).outputs["x"] == r.inputs["x"]
print("OK")
"#,
    );
}

/// Not a test: a server to measure against (e.g. with h2load and `strace -c`). Run with
/// `SEQCORE_GRPC_BENCH_SECS=30 cargo test --release --test grpc_server -- --ignored
/// serve_for_benchmark --nocapture`; it prints the address and serves for that long.
#[test]
#[ignore]
fn serve_for_benchmark() {
    let secs = std::env::var("SEQCORE_GRPC_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let addr = start_server(Limits::default());
    println!("listening on {addr}");
    std::thread::sleep(Duration::from_secs(secs));
}
