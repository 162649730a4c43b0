"""Helpers for the REST tests: a server with --rest_port, curl, http.client and raw sockets."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
from pathlib import Path

from conftest import Server, free_port, server_args_for_config, model_dir

CURL_TIMEOUT_S = 20

MODELS = [
    {"name": "summator", "base_path": str(model_dir("summator")), "stateful": True},
    {"name": "dummy", "base_path": str(model_dir("dummy"))},
]


class RestServer(Server):
    """A Server that also serves REST on its own free port (127.0.0.1)."""

    def __init__(self, args: list[str], workdir: Path, label: str = "seqcore-rest"):
        self.rest_port = free_port()
        super().__init__([*args, "--rest_port", str(self.rest_port)], workdir, label=label)
        self.base = f"http://127.0.0.1:{self.rest_port}"

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=CURL_TIMEOUT_S)


def start_rest_server(directory: Path, models=None, cores: int | None = 2, label="seqcore-rest") -> RestServer:
    args = server_args_for_config(models or MODELS, directory)
    if cores is not None:
        args += ["--cores", str(cores)]
    return RestServer(args, directory, label=label)


def curl(*args: str) -> tuple[int, dict, str]:
    """Runs curl; returns (status, headers lowercased, body)."""
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", str(CURL_TIMEOUT_S), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=CURL_TIMEOUT_S + 5)
    assert out.returncode == 0, f"curl {args} failed: {out.stderr.decode(errors='replace')}"
    text = out.stdout.decode()
    # Skip interim answers (100 Continue).
    while text.startswith("HTTP/1.1 100"):
        text = text.split("\r\n\r\n", 1)[1]
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def curl_json(method: str, url: str, body=None) -> tuple[int, object]:
    args = ["-X", method, url]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", body if isinstance(body, str) else json.dumps(body)]
    status, headers, text = curl(*args)
    assert headers.get("content-type") == "application/json", headers
    assert int(headers["content-length"]) == len(text.encode()), headers
    return status, (json.loads(text) if text else None)


def request(conn: http.client.HTTPConnection, method: str, path: str, body=None, headers=None):
    """One request on a kept-alive connection; returns (status, parsed JSON or text)."""
    data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
    conn.request(method, path, body=data, headers=headers or {})
    r = conn.getresponse()
    raw = r.read()
    ctype = r.getheader("Content-Type", "")
    if ctype == "application/json" and raw:
        return r.status, json.loads(raw)
    return r.status, raw.decode()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Sends raw bytes, reads until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def split_responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    """Splits a byte stream of HTTP/1.1 responses (each with Content-Length)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        n = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        data = rest[n:]
    return out


def tfs_body(value: float, seq_id=None, control=None) -> dict:
    inputs = {"input": [[value]]}
    if seq_id is not None:
        inputs["sequence_id"] = [seq_id]
    if control is not None:
        inputs["sequence_control_input"] = [control]
    return {"inputs": inputs}


def kserve_body(value: float, params: dict | None = None, specials: dict | None = None) -> dict:
    inputs = [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [value]}]
    for name, v in (specials or {}).items():
        dt = "UINT64" if name == "sequence_id" else "UINT32"
        inputs.append({"name": name, "shape": [1], "datatype": dt, "data": [v]})
    body = {"inputs": inputs}
    if params is not None:
        body["parameters"] = params
    return body
