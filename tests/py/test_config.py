"""Start-up configuration errors: OVMS's stateful config rules (spec §1.4, §2.7, §4.3 Config),
checked by running the binary and reading its exit code and stderr."""

import pytest

from conftest import require_ovms_summator, model_dir, run_binary, write_config

EX_USAGE = 64
NON_STATEFUL = "Stateful model config parameter used for non stateful model"
CLI_NEEDS_STATEFUL = ("Setting low_latency_transformation, max_sequence_number and idle_sequence_cleanup "
                      "require setting stateful flag for the model.")
MAX_TOO_HIGH = "Sequence max number parameter too high"
DYNAMIC = "Dynamic shape and dynamic batch size are not supported for stateful models"


def run_config(seqcore_bin, tmp_path, configs, extra=()):
    path = write_config(configs, tmp_path)
    return run_binary(["--config_path", str(path), "--port", "9", "--grpc_bind_address", "127.0.0.1", *extra])


def assert_usage_error(proc, needle):
    assert proc.returncode == EX_USAGE, f"exit {proc.returncode}, stderr: {proc.stderr!r}"
    assert needle in proc.stderr, f"{needle!r} not in stderr {proc.stderr!r}"
    assert "serving gRPC on" not in proc.stderr


def dummy(**extra):
    d = {"name": "dummy", "base_path": str(model_dir("dummy"))}
    d.update(extra)
    return d


def summator(**extra):
    d = {"name": "summator", "base_path": str(model_dir("summator")), "stateful": True}
    d.update(extra)
    return d


@pytest.mark.parametrize("key,value", [("max_sequence_number", 5), ("low_latency_transformation", True),
                                       ("idle_sequence_cleanup", True), ("idle_sequence_cleanup", False)])
@pytest.mark.parametrize("stateful", [None, False])
def test_stateful_option_on_stateless_model(seqcore_bin, tmp_path, key, value, stateful):
    cfg = dummy(**{key: value})
    if stateful is not None:
        cfg["stateful"] = stateful
    assert_usage_error(run_config(seqcore_bin, tmp_path, [cfg]), NON_STATEFUL)


@pytest.mark.parametrize("flag", [["--max_sequence_number", "5"], ["--low_latency_transformation"],
                                  ["--idle_sequence_cleanup", "false"], ["--sequence_timeout_seconds", "3"]])
def test_cli_stateful_flags_need_stateful(seqcore_bin, flag):
    proc = run_binary(["--model_name", "dummy", "--model_path", str(model_dir("dummy")), *flag,
                       "--port", "9", "--grpc_bind_address", "127.0.0.1"])
    assert_usage_error(proc, CLI_NEEDS_STATEFUL)


def test_max_sequence_number_too_high_config(seqcore_bin, tmp_path):
    assert_usage_error(run_config(seqcore_bin, tmp_path, [summator(max_sequence_number=5294967295)]), MAX_TOO_HIGH)


def test_max_sequence_number_too_high_cli(seqcore_bin):
    proc = run_binary(["--model_name", "summator", "--model_path", str(model_dir("summator")), "--stateful",
                       "--max_sequence_number", "5294967295", "--port", "9", "--grpc_bind_address", "127.0.0.1"])
    assert_usage_error(proc, MAX_TOO_HIGH)


@pytest.mark.parametrize("key", ["shape", "batch_size"])
def test_auto_shape_on_stateful(seqcore_bin, tmp_path, key):
    assert_usage_error(run_config(seqcore_bin, tmp_path, [summator(**{key: "auto"})]), DYNAMIC)


def test_unknown_model_config_key_is_named(seqcore_bin, tmp_path):
    proc = run_config(seqcore_bin, tmp_path, [summator(colour_of_sky="blue")])
    assert_usage_error(proc, "colour_of_sky")


def test_unknown_top_level_key_is_named(seqcore_bin, tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_config_list":[{"config":{"name":"dummy","base_path":"%s"}}],"frobnicate":1}'
                    % model_dir("dummy"))
    proc = run_binary(["--config_path", str(path), "--port", "9", "--grpc_bind_address", "127.0.0.1"])
    assert_usage_error(proc, "frobnicate")


def test_unknown_cli_flag_is_named(seqcore_bin):
    proc = run_binary(["--model_name", "dummy", "--model_path", str(model_dir("dummy")), "--bogus_flag", "1",
                       "--port", "9"])
    assert_usage_error(proc, "bogus_flag")


def test_missing_openvino_runtime(seqcore_bin):
    proc = run_binary(["--model_name", "summator", "--model_path", str(require_ovms_summator()), "--stateful",
                       "--port", "9", "--grpc_bind_address", "127.0.0.1"],
                      env={"SEQCORE_OPENVINO_DIR": "/nonexistent"})
    assert proc.returncode == 1, f"exit {proc.returncode}, stderr: {proc.stderr!r}"
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected a one-line message, got {proc.stderr!r}"
    assert "run 'make setup'" in lines[0]
