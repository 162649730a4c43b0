"""In-process OpenVINO reference for seqcore's tests.

The integration tests send sequences to the server over gRPC and compare the responses with
what OpenVINO computes locally for the same model:

    from reference import Reference, model_xml
    ref = Reference(model_xml("lstm"))
    expected = ref.run_sequence([{"features": x0}, {"features": x1}, ...])
    # expected[i]["scores"] is the output of step i

`Reference(..., low_latency=True)` applies LowLatency2 (use_const_initializer=True), as the
server does for models configured with "low_latency_transformation": true.

Precision: OpenVINO's CPU plugin runs bf16 by default on CPUs with native bf16 (avx512_bf16,
amx_bf16) and f32 elsewhere, so an unpinned comparison means different things on different
machines. `Reference(..., config=F32)` pins f32, `config=BF16` asks for bf16; every reference is
compiled with the server's own settings (SERVER_DEFAULTS) plus `config`, so it matches a server
model whose plugin_config is the same `config`. See docs/precision.md.
"""

from pathlib import Path

import numpy as np
import openvino as ov

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
BF16 = {"INFERENCE_PRECISION_HINT": "bf16"}
PRECISIONS = {"f32": F32, "bf16": BF16}
# The largest |output difference| accepted between two runs of the same model in the same
# precision (server vs in-process, LowLatency2 TI vs LSTMCell). f32: rounding-level. bf16:
# scripts/precision_drift.py's numpy emulation puts bf16-vs-f32 drift on the LSTM at <= 4.4e-3
# over 1000 steps (8.3e-4 seen on an AMX Xeon at step 1); 1e-2 leaves room for a different
# kernel path, and is still 14x below the smallest effect of the state on an output (0.138),
# so a lost or mixed-up state still fails.
ATOL = {"f32": 1e-5, "bf16": 1e-2}
# What seqcore's shim compiles every model with (ov_shim/seqcore_ov.cpp): a synchronous infer()
# on one thread. Using the same here keeps server and reference on the same kernels.
SERVER_DEFAULTS = {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False}


def cpu_flags() -> set[str]:
    """The flags of the first CPU in /proc/cpuinfo (empty if unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True where OpenVINO's CPU plugin can run bf16 (otherwise a bf16 hint runs f32)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


NO_BF16_REASON = ("this CPU lacks native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): "
                  "OpenVINO compiles a bf16 request as f32 here, so a bf16 run would repeat the f32 one")


def precision_params():
    """pytest parameters "f32" and "bf16", the latter skipped (saying why) without native bf16."""
    import pytest

    return [pytest.param("f32", id="f32"),
            pytest.param("bf16", id="bf16",
                         marks=pytest.mark.skipif(not cpu_has_native_bf16(), reason=NO_BF16_REASON))]


def repo_root() -> Path:
    """The seqcore checkout (this file lives in <root>/tests/py/)."""
    return Path(__file__).resolve().parents[2]


def model_xml(name: str) -> Path:
    """Path of a generated model's IR: <root>/models/generated/<name>/1/model.xml."""
    return repo_root() / "models" / "generated" / name / "1" / "model.xml"


class Reference:
    """One model compiled on CPU in this process, run sequence by sequence."""

    def __init__(self, model_xml, low_latency: bool = False, config: dict | None = None):
        """`config`: extra CPU properties, as in a server model's plugin_config (None: none,
        i.e. OpenVINO's default precision for this CPU)."""
        self.core = ov.Core()
        self.model = self.core.read_model(str(model_xml))
        if low_latency:
            from openvino._offline_transformations import apply_low_latency_transformation

            apply_low_latency_transformation(self.model, use_const_initializer=True)
        self.compiled = self.core.compile_model(self.model, "CPU", {**SERVER_DEFAULTS, **(config or {})})
        self.request = self.compiled.create_infer_request()

    @property
    def precision(self) -> str:
        """The effective inference precision OpenVINO reports ("f32", "bf16", "dynamic", ...)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    @property
    def execution_mode(self) -> str:
        """The effective execution mode ("PERFORMANCE" or "ACCURACY")."""
        return self.compiled.get_property("EXECUTION_MODE_HINT").name

    @property
    def input_names(self) -> list[str]:
        return [i.get_any_name() for i in self.compiled.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.get_any_name() for o in self.compiled.outputs]

    @property
    def state_names(self) -> list[str]:
        """Variable ids of the model's states (sorted); empty for a stateless model."""
        return sorted(s.name for s in self.request.query_state())

    def run_sequence(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Runs the steps of ONE sequence in one infer request, starting from reset state.

        inputs[i] maps input tensor names to arrays for step i; returns, per step, a dict of
        output tensor name -> array (copies, safe to keep).
        """
        self.request.reset_state()
        results = []
        for step in inputs:
            out = self.request.infer(step)
            results.append({o.get_any_name(): np.array(out[o], copy=True) for o in self.compiled.outputs})
        return results
