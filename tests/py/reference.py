"""In-process OpenVINO reference for seqcore's tests.

The integration tests send sequences to the server over gRPC and compare the responses with
what OpenVINO computes locally for the same model:

    from reference import Reference, model_xml
    ref = Reference(model_xml("lstm"))
    expected = ref.run_sequence([{"features": x0}, {"features": x1}, ...])
    # expected[i]["scores"] is the output of step i

`Reference(..., low_latency=True)` applies LowLatency2 (use_const_initializer=True), as the
server does for models configured with "low_latency_transformation": true.
"""

from pathlib import Path

import numpy as np
import openvino as ov


def repo_root() -> Path:
    """The seqcore checkout (this file lives in <root>/tests/py/)."""
    return Path(__file__).resolve().parents[2]


def model_xml(name: str) -> Path:
    """Path of a generated model's IR: <root>/models/generated/<name>/1/model.xml."""
    return repo_root() / "models" / "generated" / name / "1" / "model.xml"


class Reference:
    """One model compiled on CPU in this process, run sequence by sequence."""

    def __init__(self, model_xml, low_latency: bool = False):
        self.core = ov.Core()
        self.model = self.core.read_model(str(model_xml))
        if low_latency:
            from openvino._offline_transformations import apply_low_latency_transformation

            apply_low_latency_transformation(self.model, use_const_initializer=True)
        self.compiled = self.core.compile_model(self.model, "CPU")
        self.request = self.compiled.create_infer_request()

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
