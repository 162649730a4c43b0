"""TLS on the gRPC and REST listeners (--ssl_cert, --ssl_key, --ssl_client_ca; src/tls.rs).

A throwaway CA, a server certificate for 127.0.0.1/localhost and client certificates are made
at test time with the `openssl` CLI (scripts/setup.sh installs it). Clients: grpcio with
upstream's TF-Serving stubs, tritonclient (gRPC and HTTP), curl, raw sockets.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, prediction_service_pb2_grpc

from conftest import (END, START, Server, free_port, model_dir, predict_ok, run_binary,
                      server_args_for_config, summator_out, summator_request)

CURL_TIMEOUT_S = 20
MODELS = [{"name": "summator", "base_path": str(model_dir("summator")), "stateful": True}]
HANDSHAKE_TIMEOUT_S = 2


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 0, f"openssl {args}: {out.stderr.decode(errors='replace')}"


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d: Path, name: str, ca: str, ext: str) -> None:
    """A certificate `name`.pem (key `name`.key) signed by `ca`, with the extensions `ext`."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca")
    make_ca(d, "otherca")
    make_leaf(d, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                 "extendedKeyUsage=serverAuth\n")
    client_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    make_leaf(d, "client", "ca", client_ext)
    make_leaf(d, "stranger", "otherca", client_ext)
    return d


def tls_args(certs: Path, client_ca: bool = False) -> list[str]:
    args = ["--ssl_cert", str(certs / "server.pem"), "--ssl_key", str(certs / "server.key"),
            "--ssl_handshake_timeout_seconds", str(HANDSHAKE_TIMEOUT_S)]
    if client_ca:
        args += ["--ssl_client_ca", str(certs / "ca.pem")]
    return args


def grpc_creds(certs: Path, client: str | None = None) -> grpc.ChannelCredentials:
    kw = {}
    if client is not None:
        kw = {"private_key": (certs / f"{client}.key").read_bytes(),
              "certificate_chain": (certs / f"{client}.pem").read_bytes()}
    return grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes(), **kw)


class TlsServer(Server):
    """A Server whose gRPC and REST listeners are TLS only; its channels use `creds`."""

    def __init__(self, args: list[str], workdir: Path, creds: grpc.ChannelCredentials, label: str = "seqcore-tls"):
        self.creds = creds
        self.rest_port = free_port()
        super().__init__([*args, "--rest_port", str(self.rest_port)], workdir, label=label)

    def new_channel(self, separate_connection: bool = True, creds: grpc.ChannelCredentials | None = None,
                    port: int | None = None) -> grpc.Channel:
        opts = [("grpc.use_local_subchannel_pool", 1)] if separate_connection else []
        ch = grpc.secure_channel(f"127.0.0.1:{port or self.port}", creds or self.creds, options=opts)
        grpc.channel_ready_future(ch).result(timeout=10)
        self._channels.append(ch)
        return ch


@pytest.fixture(scope="module")
def server(seqcore_bin, certs, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    shard_base = free_port()
    srv = TlsServer([*server_args_for_config(MODELS, d), *tls_args(certs), "--cores", "2",
                     "--shard_port_base", str(shard_base)], d, grpc_creds(certs))
    srv.shard_base = shard_base
    yield srv
    srv.stop()


def run_sequence(stub, seq_id: int, values=(1.0, 2.0, 3.5, -0.5)) -> list[float]:
    sums = []
    for i, v in enumerate(values):
        control = START if i == 0 else END if i == len(values) - 1 else None
        sums.append(summator_out(predict_ok(stub, summator_request(v, seq_id=seq_id, control=control))))
    return sums


def expected_sums(values=(1.0, 2.0, 3.5, -0.5)) -> list[float]:
    return list(np.cumsum(values, dtype=np.float32))


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(CURL_TIMEOUT_S), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=CURL_TIMEOUT_S + 5)


def curl_ok(*args: str) -> dict:
    out = curl(*args)
    assert out.returncode == 0, f"curl {args}: {out.stderr}"
    return json.loads(out.stdout)


# --------------------------------------------------------------------------------------------
# Clients over TLS
# --------------------------------------------------------------------------------------------


def test_grpcio_tfs_sequence_over_tls(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    assert run_sequence(stub, 7001) == expected_sums()
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "summator"
    status = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(req, timeout=10)
    assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_shard_ports_serve_tls_only(server):
    ch = server.new_channel(port=server.shard_base)
    assert run_sequence(prediction_service_pb2_grpc.PredictionServiceStub(ch), 7002) == expected_sums()
    plain = grpc.insecure_channel(f"127.0.0.1:{server.shard_base}")
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(plain).result(timeout=2)
    plain.close()


def test_alpn_is_h2_on_grpc_and_http11_on_rest(server, certs):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    for port, want in ((server.port, "h2"), (server.rest_port, "http/1.1")):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                assert s.selected_alpn_protocol() == want
                assert s.version() in ("TLSv1.3", "TLSv1.2")


def test_tritonclient_grpc_sequence_over_tls(server, certs):
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}", ssl=True,
                                      root_certificates=str(certs / "ca.pem"))
    try:
        values = [1.0, 2.0, 3.5, -0.5]
        sums = []
        for i, v in enumerate(values):
            inp = tc.InferInput("input", [1, 1], "FP32")
            inp.set_data_from_numpy(np.array([[v]], dtype=np.float32))
            r = client.infer("summator", [inp], sequence_id=7003, sequence_start=(i == 0),
                             sequence_end=(i == len(values) - 1))
            sums.append(float(r.as_numpy("add_sum").reshape(-1)[0]))
        assert sums == expected_sums(values)
    finally:
        client.close()


def test_tritonclient_http_sequence_over_tls(server, certs):
    import tritonclient.http as httpclient

    ca = str(certs / "ca.pem")
    client = httpclient.InferenceServerClient(url=f"localhost:{server.rest_port}", ssl=True,
                                              ssl_context_factory=lambda: ssl.create_default_context(cafile=ca))
    try:
        assert client.is_model_ready("summator")
        values = [1.0, 2.0, 3.5, -0.5]
        sums = []
        for i, v in enumerate(values):
            inp = httpclient.InferInput("input", [1, 1], "FP32")
            inp.set_data_from_numpy(np.array([[v]], dtype=np.float32))
            r = client.infer("summator", [inp], sequence_id=7004, sequence_start=(i == 0),
                             sequence_end=(i == len(values) - 1))
            sums.append(float(r.as_numpy("add_sum").reshape(-1)[0]))
        assert sums == expected_sums(values)
    finally:
        client.close()


def test_curl_rest_over_tls(server, certs):
    base = f"https://localhost:{server.rest_port}"
    ca = ["--cacert", str(certs / "ca.pem")]
    status = curl_ok(*ca, f"{base}/v1/models/summator")
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    sums = []
    for value, control in ((1.0, 1), (2.0, None), (3.5, 2)):
        inputs = {"input": [[value]], "sequence_id": [7005]}
        if control is not None:
            inputs["sequence_control_input"] = [control]
        body = curl_ok(*ca, "-H", "Content-Type: application/json", "--data-binary", json.dumps({"inputs": inputs}),
                       f"{base}/v1/models/summator:predict")
        sums.append(body["outputs"]["add_sum"][0][0])
    assert sums == [1.0, 3.0, 6.5]
    # A client that does not trust the server's CA refuses it.
    assert curl(f"{base}/v1/models/summator").returncode != 0


def test_rest_pipelined_and_large_bodies_over_tls(server, certs):
    """Many pipelined requests in one write and a 2 MiB body: answers span many TLS records."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    n = 300
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /v1/models/summator HTTP/1.1\r\nHost: x\r\n\r\n" * n)
            data = b""
            while data.count(b"HTTP/1.1 200 OK") < n or not data.endswith(b"\n}"):
                b = s.recv(65536)
                assert b, f"closed after {data.count(b'HTTP/1.1 200')} answers"
                data += b
            assert data.count(b"AVAILABLE") == n
            body = b'{"inputs": {"input": [[' + b"1.0, " * (2 << 18) + b'1.0]]}}'
            s.sendall(b"POST /v1/models/summator:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answer = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                answer += b
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


# --------------------------------------------------------------------------------------------
# Clients that do not speak TLS, or never finish the handshake
# --------------------------------------------------------------------------------------------


def test_plaintext_clients_fail_cleanly_and_the_server_keeps_serving(server):
    plain = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(plain)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(summator_request(1.0, seq_id=7006, control=START), timeout=3)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    plain.close()
    assert curl(f"http://127.0.0.1:{server.rest_port}/v1/models/summator").returncode != 0
    # Plain HTTP bytes on either port: the server closes the connection (after a TLS alert at most).
    for port in (server.port, server.rest_port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /v1/models/summator HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                try:
                    b = s.recv(4096)
                except ConnectionResetError:
                    break
                if not b:
                    break
                data += b
            assert b"HTTP/1.1" not in data
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    assert run_sequence(stub, 7007) == expected_sums()
    assert "TLS handshake(s) failed" in server.stderr_text()


def closed_within(port: int, seconds: float) -> float:
    """Opens a TCP connection, sends nothing; returns how long until the server closed it."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as s:
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail(f"port {port}: a silent connection was still open after {seconds} s")
    return time.monotonic() - t0


def test_silent_connections_are_closed_after_the_handshake_timeout(server):
    for port in (server.port, server.rest_port, server.shard_base):
        took = closed_within(port, HANDSHAKE_TIMEOUT_S + 5)
        assert HANDSHAKE_TIMEOUT_S - 0.5 <= took <= HANDSHAKE_TIMEOUT_S + 3, (port, took)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    assert run_sequence(stub, 7008) == expected_sums()


def test_handshakes_count_toward_the_connection_limit(seqcore_bin, certs, tmp_path):
    """One shard, one gRPC connection allowed: while a silent client holds the slot in its
    handshake, a real client is refused; after the handshake timeout, it is served."""
    srv = TlsServer([*server_args_for_config(MODELS, tmp_path), *tls_args(certs), "--cores", "1",
                     "--grpc_max_connections", "2"], tmp_path, grpc_creds(certs), label="seqcore-tls-limit")
    try:
        # srv.channel holds one slot; a silent connection takes the other.
        silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        time.sleep(0.3)
        extra = grpc.secure_channel(f"127.0.0.1:{srv.port}", grpc_creds(certs),
                                    options=[("grpc.use_local_subchannel_pool", 1)])
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(extra).result(timeout=1)
        grpc.channel_ready_future(extra).result(timeout=HANDSHAKE_TIMEOUT_S + 10)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(extra)
        assert run_sequence(stub, 7009) == expected_sums()
        extra.close()
        silent.close()
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------
# Client certificates
# --------------------------------------------------------------------------------------------


def test_client_certificates_are_required_with_ssl_client_ca(seqcore_bin, certs, tmp_path):
    srv = TlsServer([*server_args_for_config(MODELS, tmp_path), *tls_args(certs, client_ca=True), "--cores", "1"],
                    tmp_path, grpc_creds(certs, client="client"), label="seqcore-mtls")
    try:
        assert "client certificates required" in srv.stderr_text()
        stub = prediction_service_pb2_grpc.PredictionServiceStub(srv.channel)
        assert run_sequence(stub, 7010) == expected_sums()
        for who in (None, "stranger"):
            ch = grpc.secure_channel(f"127.0.0.1:{srv.port}", grpc_creds(certs, client=who))
            with pytest.raises(grpc.RpcError) as e:
                prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(
                    summator_request(1.0, seq_id=7011, control=START), timeout=5)
            assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), who
            ch.close()
        url = f"https://localhost:{srv.rest_port}/v1/models/summator"
        ca = ["--cacert", str(certs / "ca.pem")]
        assert curl(*ca, url).returncode != 0
        assert curl(*ca, "--cert", str(certs / "stranger.pem"), "--key", str(certs / "stranger.key"), url).returncode != 0
        status = curl_ok(*ca, "--cert", str(certs / "client.pem"), "--key", str(certs / "client.key"), url)
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        assert run_sequence(stub, 7012) == expected_sums()
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------
# Bad flags and files: exit 64 with a message
# --------------------------------------------------------------------------------------------


def bad_files(certs: Path, d: Path) -> dict[str, Path]:
    (d / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    (d / "empty.pem").write_text("")
    openssl("genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "other.key", cwd=d)
    return {"garbage": d / "garbage.pem", "empty": d / "empty.pem", "other_key": d / "other.key",
            "missing": d / "missing.pem"}


@pytest.mark.parametrize("case, message", [
    ("cert_only", "--ssl_cert needs --ssl_key"),
    ("key_only", "--ssl_key needs --ssl_cert"),
    ("ca_only", "--ssl_client_ca needs --ssl_cert and --ssl_key"),
    ("timeout_only", "--ssl_handshake_timeout_seconds needs --ssl_cert"),
    ("timeout_zero", "--ssl_handshake_timeout_seconds: between 1 and"),
    ("missing_cert", "--ssl_cert {missing}: cannot read the file"),
    ("garbage_cert", "--ssl_cert {garbage}: not valid PEM"),
    ("empty_cert", "--ssl_cert {empty}: no PEM certificate"),
    ("cert_as_key", "--ssl_key {server_pem}: no usable PEM private key"),
    ("mismatched_key", "--ssl_key {other_key} does not fit --ssl_cert {server_pem}"),
    ("missing_ca", "--ssl_client_ca {missing}: cannot read the file"),
    ("empty_ca", "--ssl_client_ca {empty}: no PEM certificate"),
])
def test_bad_tls_configuration_exits_64(seqcore_bin, certs, tmp_path, case, message):
    f = bad_files(certs, tmp_path)
    cert, key = str(certs / "server.pem"), str(certs / "server.key")
    args = {
        "cert_only": ["--ssl_cert", cert],
        "key_only": ["--ssl_key", key],
        "ca_only": ["--ssl_client_ca", cert],
        "timeout_only": ["--ssl_handshake_timeout_seconds", "5"],
        "timeout_zero": ["--ssl_cert", cert, "--ssl_key", key, "--ssl_handshake_timeout_seconds", "0"],
        "missing_cert": ["--ssl_cert", str(f["missing"]), "--ssl_key", key],
        "garbage_cert": ["--ssl_cert", str(f["garbage"]), "--ssl_key", key],
        "empty_cert": ["--ssl_cert", str(f["empty"]), "--ssl_key", key],
        "cert_as_key": ["--ssl_cert", cert, "--ssl_key", cert],
        "mismatched_key": ["--ssl_cert", cert, "--ssl_key", str(f["other_key"])],
        "missing_ca": ["--ssl_cert", cert, "--ssl_key", key, "--ssl_client_ca", str(f["missing"])],
        "empty_ca": ["--ssl_cert", cert, "--ssl_key", key, "--ssl_client_ca", str(f["empty"])],
    }[case]
    r = run_binary(["--model_name", "summator", "--model_path", str(model_dir("summator")), "--stateful",
                    "--port", str(free_port()), "--grpc_bind_address", "127.0.0.1", *args])
    assert r.returncode == 64, (r.returncode, r.stderr)
    want = message.format(missing=f["missing"], garbage=f["garbage"], empty=f["empty"], other_key=f["other_key"],
                          server_pem=cert)
    assert want in r.stderr, r.stderr
