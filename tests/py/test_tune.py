"""`seqcore tune`: `check` runs on this machine (whatever it lacks), `--json` parses, `--dry-run`
prints a valid sh script, bad flags are usage errors (tuning/README.md).

These tests never run `seqcore tune` without --dry-run on this machine: that would change it.
"""

import json
import os
import subprocess

from conftest import run_binary

EX_USAGE = 64
# check: 0 every setting that matters is at its recommendation, 2 some are off.
CHECK_CODES = (0, 2)

REQUIRED = [
    "cpu.governor", "cpu.boost", "cpu.cstates", "mm.transparent_hugepage", "kernel.numa_balancing",
    "vm.swappiness", "irqbalance", "net.irq_affinity", "net.rps", "net.xps", "kernel.isolcpus",
    "kernel.nohz_full", "kernel.rcu_nocbs", "net.core.somaxconn", "net.listen_backlog", "limits.memlock",
    "kernel.io_uring_disabled", "io_uring.setup", "clocksource",
]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The rows of check's table by setting name (columns split on runs of 2+ spaces)."""
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("SETTING "))
    rows = {}
    for line in lines[head + 1:]:
        if not line.strip():
            break
        cells = [c for c in line.split("  ") if c.strip()]
        rows[cells[0].strip()] = [c.strip() for c in cells]
    return rows


def test_check_on_this_machine(seqcore_bin):
    p = run_binary(["tune", "check"])
    assert p.returncode in CHECK_CODES, f"exit {p.returncode}; stderr {p.stderr!r}"
    rows = table_rows(p.stdout)
    assert len(rows) >= 15, p.stdout
    missing = [n for n in REQUIRED if n not in rows]
    assert not missing, f"rows missing: {missing}\n{p.stdout}"
    for name, cells in rows.items():
        assert len(cells) >= 6, f"{name}: {cells}"
        assert cells[-3] in ("yes", "no"), f"{name}: {cells}"
        assert cells[-2] in ("ok", "off", "n/a"), f"{name}: {cells}"
    off = [n for n, c in rows.items() if c[-3] == "yes" and c[-2] == "off"]
    assert (p.returncode == 2) == bool(off), f"exit {p.returncode}, off where it matters: {off}"


def test_check_json(seqcore_bin):
    p = run_binary(["tune", "check", "--json"])
    assert p.returncode in CHECK_CODES, p.stderr
    report = json.loads(p.stdout)
    settings = report["settings"]
    assert len(settings) >= 15
    names = {s["name"] for s in settings}
    assert set(REQUIRED) <= names, set(REQUIRED) - names
    for s in settings:
        assert set(s) >= {"name", "current", "recommended", "matters", "ok", "status", "why", "fix"}, s
        assert (s["status"] == "n/a") == (s["current"] is None), s
    assert report["off"] == sum(1 for s in settings if s["matters"] and s["status"] == "off")
    assert (p.returncode == 2) == (report["off"] > 0)
    assert report["shard_cpus"] == sorted(os.sched_getaffinity(0))


def test_matters_follows_the_shard_cpus(seqcore_bin):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return  # one CPU: it is the only shard either way
    every = json.loads(run_binary(["tune", "check", "--json"]).stdout)
    one = json.loads(run_binary(["tune", "check", "--json", "--cpuset", str(cpus[-1])]).stdout)
    assert one["shard_cpus"] == [cpus[-1]] and cpus[0] in one["housekeeping_cpus"]
    by_name = lambda r: {s["name"]: s for s in r["settings"]}  # noqa: E731
    # Isolation and IRQ placement matter only with a housekeeping CPU beside the shards.
    assert not by_name(every)["kernel.isolcpus"]["matters"] or every["housekeeping_cpus"]
    assert by_name(one)["kernel.isolcpus"]["matters"]
    assert by_name(one)["net.irq_affinity"]["matters"]
    two = json.loads(run_binary(["tune", "check", "--json", "--cores", "1"]).stdout)
    assert two["shard_cpus"] == cpus[:1]


def test_dry_run_is_a_sh_script(seqcore_bin, tmp_path):
    p = run_binary(["tune", "--dry-run"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("#!/bin/sh\n")
    script = tmp_path / "tune.sh"
    script.write_text(p.stdout)
    sh = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert sh.returncode == 0, f"sh -n: {sh.stderr}\n{p.stdout}"
    for line in p.stdout.splitlines():
        assert not line or line.startswith("#") or line.startswith("echo "), line
    # With one shard beside a housekeeping CPU there is more to say; still a valid script.
    cpus = sorted(os.sched_getaffinity(0))
    p = run_binary(["tune", "--dry-run", "--cpuset", str(cpus[-1])])
    assert p.returncode == 0, p.stderr
    script.write_text(p.stdout)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0, p.stdout


def test_an_empty_root_has_nothing_available(seqcore_bin, tmp_path):
    p = run_binary(["tune", "check", "--json", "--root", str(tmp_path)])
    assert p.returncode == 0, p.stderr
    settings = json.loads(p.stdout)["settings"]
    assert settings and all(s["current"] is None and s["status"] == "n/a" for s in settings)


def test_usage_errors(seqcore_bin):
    for args in (["--bogus"], ["check", "--bogus"], ["check", "--dry-run"], ["--json"], ["--cores", "x"],
                 ["--cores", "0"], ["--cpuset", "a-b"], ["--cpuset", "4095"], ["apply-now"]):
        p = run_binary(["tune", *args])
        assert p.returncode == EX_USAGE, f"{args}: exit {p.returncode}, stderr {p.stderr!r}"
        assert p.stderr.startswith("seqcore tune: "), p.stderr
        assert p.stdout == "", f"{args}: {p.stdout!r}"


def test_help(seqcore_bin):
    p = run_binary(["tune", "--help"])
    assert p.returncode == 0
    for needle in ("seqcore tune check", "--dry-run", "--json", "--cpuset", "--cores", "Exit codes", "64"):
        assert needle in p.stdout, needle
