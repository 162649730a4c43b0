"""`make bench-bf16` (scripts/bench_bf16.py) takes bf16 figures only where OpenVINO can run bf16.

Its measurements take about an hour, so the suite checks only the refusal: on a CPU without
native bf16 a bf16 hint compiles as f32, and figures labelled bf16 would be f32 ones.
"""

import subprocess
import sys

import pytest

from reference import cpu_has_native_bf16, repo_root


@pytest.mark.skipif(cpu_has_native_bf16(), reason="this CPU has native bf16: the script would run its hour")
def test_refuses_without_native_bf16_and_writes_nothing(tmp_path):
    doc = tmp_path / "bf16.md"
    p = subprocess.run([sys.executable, "scripts/bench_bf16.py", "--doc", str(doc)], cwd=repo_root(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p
    assert "has neither avx512_bf16 nor amx_bf16" in p.stderr, p.stderr
    assert "--check" in p.stderr, p.stderr
    assert p.stdout == ""
    assert not doc.exists()


def test_unknown_part_is_a_usage_error(tmp_path):
    p = subprocess.run([sys.executable, "scripts/bench_bf16.py", "--check", "--parts", "drift,nonsense",
                        "--doc", str(tmp_path / "bf16.md")], cwd=repo_root(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p
    assert "--parts: unknown ['nonsense']" in p.stderr, p.stderr
    assert not (tmp_path / "bf16.md").exists()
