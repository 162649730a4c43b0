"""Clients that vanish (issue 12, part 2): cancelled calls, killed client processes and reset
connections leave their sequences to the idle timeout; nothing leaks, live counts return to 0,
and a client that cancels everything it has in flight, again and again, keeps its connection
(h2's reset limits are set for it: no ENHANCE_YOUR_CALM for a healthy client).

Real server (gRPC debug log on, so connection errors show in its stderr), grpcio with upstream's
TF-Serving stubs, a client process killed with SIGKILL, raw sockets reset with SO_LINGER 0.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest

from conftest import (END, START, Server, model_dir, make_request, predict_ok, summator_out, summator_request,
                      write_config)

MODELS = [
    {"name": "summator", "base_path": str(model_dir("summator")), "stateful": True, "sequence_timeout_seconds": 1,
     "max_sequence_number": 100_000},
    {"name": "lstm", "base_path": str(model_dir("lstm")), "stateful": True, "sequence_timeout_seconds": 1,
     "max_sequence_number": 100_000},
]
STREAMS_MAX = 128  # grpc::Limits::streams_max


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQCORE_GRPC_DEBUG", "1")
    srv = Server(["--config_path", str(write_config(MODELS, tmp_path)), "--cores", "1"], tmp_path,
                 label="seqcore-loss")
    yield srv
    srv.stop()


def wait_live_zero(srv: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.live_sequences("summator") == 0 and srv.live_sequences("lstm") == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"live sequences left: summator {srv.live_sequences('summator')}, "
                         f"lstm {srv.live_sequences('lstm')}")


def test_mass_cancellation_keeps_the_connection(server):
    """Every call this client may have open (SETTINGS_MAX_CONCURRENT_STREAMS) is sent, then all
    are cancelled at once, 40 times over, on one connection, while the shard is busy with them:
    the connection survives (h2 would close it with ENHANCE_YOUR_CALM past 20 streams reset
    before the server took them), the next call on it succeeds, and the sequences the
    cancelled STARTs made time out."""
    ch = server.new_channel()
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
    frame = np.zeros((1, 40), np.float32)
    seq = 1
    for _ in range(40):
        futures = []
        for _ in range(STREAMS_MAX):
            futures.append(stub.Predict.future(make_request("lstm", {"features": frame}, seq_id=seq, control=START),
                                               timeout=30))
            seq += 1
        for f in futures:
            f.cancel()
    # The same connection still serves (a GOAWAY would make grpcio reconnect: checked in the log).
    assert summator_out(predict_ok(stub, summator_request(2.0, seq_id=10**6, control=START))) == 2.0
    assert summator_out(predict_ok(stub, summator_request(1.0, seq_id=10**6, control=END))) == 3.0
    text = server.stderr_text()
    assert "ENHANCE_YOUR_CALM" not in text and "calm" not in text.lower(), text[-3000:]
    wait_live_zero(server)


CLIENT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import grpc
    from conftest import summator_request, START
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    ch = grpc.insecure_channel({addr!r})
    stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
    for i in range(50):
        stub.Predict(summator_request(1.0, seq_id=5000 + i, control=START), timeout=10)
    futures = [stub.Predict.future(summator_request(1.0, seq_id=5000 + i), timeout=10) for i in range(50)]
    print("started", flush=True)
    time.sleep(0.01)
    os.kill(os.getpid(), 9)
""")


def test_a_killed_client_leaves_its_sequences_to_the_timeout(server):
    from pathlib import Path
    code = CLIENT.format(tests=str(Path(__file__).resolve().parent), addr=server.addr)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "started" in proc.stdout, proc.stderr
    assert proc.returncode == -9
    assert server.live_sequences("summator") == 50
    wait_live_zero(server)
    # The server is fine, and the ids are free again.
    assert summator_out(predict_ok(server.stub, summator_request(4.0, seq_id=5000, control=START))) == 4.0
    predict_ok(server.stub, summator_request(0.0, seq_id=5000, control=END))


def h2_request_bytes() -> bytes:
    """An HTTP/2 client preface, SETTINGS, and the HEADERS of a Predict call without its body."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = struct.pack(">I", 0)[1:] + bytes([4, 0]) + struct.pack(">I", 0)
    # HPACK: :method POST (2 = 0x83), :scheme http (0x86), :path literal without indexing.
    path = b"/tensorflow.serving.PredictionService/Predict"
    block = bytes([0x83, 0x86, 0x04, len(path)]) + path + bytes([0x0f, 0x10, 16]) + b"application/grpc"
    headers = struct.pack(">I", len(block))[1:] + bytes([1, 4]) + struct.pack(">I", 1) + block
    return preface + settings + headers


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def read_frames(sock: socket.socket, seconds: float) -> list[tuple[int, int, bytes]]:
    """The frames the server sends within `seconds` (type, stream, payload)."""
    sock.settimeout(0.05)
    buf, out, deadline = b"", [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            out.append((buf[3], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n]))
            buf = buf[9 + n:]
    return out


def test_cancelling_every_open_call_at_once_is_not_an_attack(server):
    """A client writes as many Predict calls as it may have open, then a RST_STREAM (CANCEL) for
    each, in one write, 20 times on one connection: the server must not answer with GOAWAY
    ENHANCE_YOUR_CALM (h2's default allows only 20 streams reset before they are accepted), and
    the connection then serves a call."""
    body = summator_request(1.0, seq_id=0, control=START).SerializeToString()
    message = b"\x00" + struct.pack(">I", len(body)) + body
    path = b"/tensorflow.serving.PredictionService/Predict"
    block = (bytes([0x83, 0x86, 0x04, len(path)]) + path + bytes([0x01, 9]) + b"127.0.0.1"
             + bytes([0x0f, 0x10, 16]) + b"application/grpc")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
    stream = 1
    for _ in range(20):
        calls, resets = b"", b""
        for _ in range(STREAMS_MAX):
            calls += frame(1, 4, stream, block) + frame(0, 1, stream, message)
            resets += frame(3, 0, stream, struct.pack(">I", 8))
            stream += 2
        sock.sendall(calls + resets)
        frames = read_frames(sock, 0.2)
        goaway = [f for f in frames if f[0] == 7]
        assert not goaway, f"GOAWAY error code {int.from_bytes(goaway[0][2][4:8], 'big')} after stream {stream}"
    sock.sendall(frame(1, 4, stream, block) + frame(0, 1, stream, message))
    frames = read_frames(sock, 2.0)
    assert any(f[0] == 1 and f[1] == stream for f in frames), f"no answer on stream {stream}: {frames[:5]}"
    assert not [f for f in frames if f[0] == 7]
    sock.close()
    # The STARTs that ran before their reset made sequences; they time out.
    wait_live_zero(server)


def test_connections_reset_mid_request_leave_nothing_behind(server):
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(h2_request_bytes())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST: the call's body never comes
    assert summator_out(predict_ok(server.stub, summator_request(1.5, seq_id=7, control=START))) == 1.5
    assert summator_out(predict_ok(server.stub, summator_request(1.0, seq_id=7, control=END))) == 2.5
    stats = server.stats()
    assert all(m["live_sequences"] == 0 for sh in stats["shards"] for m in sh["models"])
