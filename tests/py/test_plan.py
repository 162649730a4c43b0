"""The placement plan (src/plan.rs): `seqcore plan` prints it as JSON without starting (no
OpenVINO, no models needed), a plan that cannot be made is a usage error naming its flag, and a
started server's introspection answer carries the plan it runs on."""

import json

from conftest import model_dir, run_binary

EX_USAGE = 64


def plan_of(args: list[str]) -> dict:
    p = run_binary(["plan", *args])
    assert p.returncode == 0, f"exit {p.returncode}, stderr: {p.stderr!r}"
    return json.loads(p.stdout)


def test_plan_with_one_core(seqcore_bin):
    plan = plan_of(["--cores", "1"])
    assert len(plan["shards"]) == 1, plan
    shard = plan["shards"][0]
    assert shard["shard"] == 0 and isinstance(shard["pu"], int), shard
    for key in ("core", "l3", "numa_node", "package"):
        assert key in shard, shard
    assert plan["smt"] == "off"
    # No models given: none listed.
    assert "models" not in plan and "models" not in shard, plan
    node = shard["numa_node"]
    assert any(n["node"] == node and 0 in n["shards"] and shard["pu"] in n["cpus"] for n in plan["numa_nodes"]), plan


def test_plan_lists_the_models_every_shard_holds(seqcore_bin):
    plan = plan_of(["--model_name", "dummy", "--model_path", str(model_dir("dummy"))])
    assert plan["shards"], plan
    assert all(s["models"] == ["dummy"] for s in plan["shards"]), plan
    assert plan["models"] == ["dummy"]


def test_plan_on_a_missing_numa_node_is_a_usage_error(seqcore_bin):
    p = run_binary(["plan", "--numa_nodes", "7"])
    assert p.returncode == EX_USAGE, f"exit {p.returncode}, stderr: {p.stderr!r}"
    assert "--numa_nodes" in p.stderr and "NUMA node 7 does not exist" in p.stderr, p.stderr
    assert p.stdout == ""


def test_the_server_refuses_a_plan_it_cannot_make(seqcore_bin):
    p = run_binary(["--model_name", "dummy", "--model_path", str(model_dir("dummy")), "--numa_nodes", "7",
                    "--port", "9", "--grpc_bind_address", "127.0.0.1"])
    assert p.returncode == EX_USAGE, f"exit {p.returncode}, stderr: {p.stderr!r}"
    assert "--numa_nodes: NUMA node 7 does not exist" in p.stderr, p.stderr
    assert "serving gRPC on" not in p.stderr
    p = run_binary(["plan", "--cores", "100000"])
    assert p.returncode == EX_USAGE and "--cores 100000: only" in p.stderr, p.stderr


def test_introspection_carries_the_plan(start_server):
    srv = start_server(config=[{"name": "summator", "base_path": str(model_dir("summator")), "stateful": True}])
    stats = srv.stats()
    plan = stats["plan"]
    assert len(plan["shards"]) == len(stats["shards"]) >= 1, stats
    for entry, shard in zip(plan["shards"], stats["shards"]):
        assert entry["shard"] == shard["shard"], (entry, shard)
        assert entry["pu"] == shard["cpu"], (entry, shard)
        assert entry["numa_node"] == shard["numa_node"], (entry, shard)
        assert entry["models"] == ["summator"], entry
    # `seqcore plan` with the server's own flags plans the same.
    assert plan_of(srv.args) == plan
    assert "plan: shard 0 on PU" in srv.stderr_text()


def test_plan_for_a_described_two_socket_server(seqcore_bin, tmp_path):
    """A plan previewed for another machine: 2 packages, 2 NUMA nodes each, 8 cores of 2
    hyper-threads per node. One shard per physical core, node by node; every sibling idle."""
    desc = "pack:2 numa:2 core:8 pu:2"
    plan = plan_of(["--synthetic_topology", desc])
    shards = plan["shards"]
    assert len(shards) == 32 and len(plan["skipped"]) == 32, plan
    assert [s["numa_node"] for s in shards] == [n for n in range(4) for _ in range(8)]
    assert len({(s["package"], s["core"]) for s in shards}) == 32, "no two shards on one core"
    assert all("sibling" in s["reason"] for s in plan["skipped"]), plan["skipped"]
    # --smt on with a cut keeps physical cores first; --numa_nodes restricts to one node.
    plan = plan_of(["--synthetic_topology", desc, "--smt", "on", "--numa_nodes", "1", "--cores", "8"])
    assert len({s["core"] for s in plan["shards"]}) == 8 and {s["numa_node"] for s in plan["shards"]} == {1}
    bad = run_binary(["plan", "--synthetic_topology", "pack:two"])
    assert bad.returncode == EX_USAGE and "--synthetic_topology" in bad.stderr, bad.stderr
