"""The bounded soak (scripts/soak.py, whose full version is `make soak`): a real server and a
verified load generator per protocol (TF-Serving gRPC and REST, KServe gRPC, streaming and
REST), paced streams whose sequences start and end all through the run, a fraction of them
cancelled mid-call or dropping their connection, and vandal clients SIGKILLed mid-run.

Every answer of the verified clients must be its own sequence's running sum: zero wrong answers,
zero errors besides the injected ones, RSS flat after the warm-up, every abandoned sequence gone
once the idle timeout has passed, no panic in the server's log.
"""

import json
import os
import subprocess
import sys

from conftest import ROOT

LOADGEN_BIN = os.environ.get("LOADGEN_BIN", str(ROOT / "target" / "release" / "loadgen"))


def test_bounded_soak(seqcore_bin, tmp_path):
    report_path = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "soak.py"), "--bin", str(seqcore_bin), "--loadgen", LOADGEN_BIN,
           "--duration", "15", "--streams", "1500", "--interval-ms", "500", "--length", "10",
           "--cancel-fraction", "0.03", "--disconnect-fraction", "0.03", "--vandal-every", "2",
           "--vandal-sequences", "200", "--sequence-timeout", "3", "--seed", "12",
           "--min-requests", "30000", "--min-sequences", "3000", "--json", str(report_path)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=180)
    assert p.returncode == 0, f"soak failed:\n{p.stderr}\n{p.stdout}"
    report = json.loads(report_path.read_text())
    assert report["failures"] == []
    # The faults were injected, and every client saw its share of them.
    assert report["total"]["cancelled"] > 0 and report["total"]["disconnects"] > 0, report["total"]
    assert report["vandals"]["kills"] >= 3, report["vandals"]
    assert set(report["clients"]) == {"tfs-grpc", "kserve-grpc", "kserve-stream", "tfs-rest", "kserve-rest"}
    for proto, c in report["clients"].items():
        assert c["verify_failures"] == 0 and c["errors"]["total"] == 0, (proto, c)
        assert c["requests_total"] > 1000, (proto, c)
    assert report["live_after_timeout"] == 0
