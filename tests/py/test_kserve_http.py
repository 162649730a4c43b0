"""tritonclient.http (Triton's own HTTP client) drives whole sequences over KServe v2 REST with
Triton's sequence parameters, numeric and string ids, and checks every running sum."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from rest_helpers import start_rest_server


@pytest.fixture(scope="module")
def server(seqcore_bin, tmp_path_factory):
    s = start_rest_server(tmp_path_factory.mktemp("kserve-http"), cores=2, label="seqcore-kserve-http")
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.rest_port}", concurrency=1)
    yield c
    c.close()


def step(client, value, **sequence):
    inp = httpclient.InferInput("input", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[value]], dtype=np.float32), binary_data=False)
    out = httpclient.InferRequestedOutput("add_sum", binary_data=False)
    result = client.infer("summator", [inp], outputs=[out], **sequence)
    return float(result.as_numpy("add_sum")[0, 0]), result.get_response()


@pytest.mark.parametrize("ids", [[101, 102, 2**63 + 5], ["utt-a", "utt-b", "7"]], ids=["uint64", "string"])
def test_interleaved_sequences_with_triton_parameters(client, ids):
    rng = np.random.default_rng(3)
    steps = 12
    values = {i: rng.integers(-50, 50, steps).astype(np.float32) for i in ids}
    sums = {i: 0.0 for i in ids}
    for k in range(steps):
        for i in ids:
            got, resp = step(client, float(values[i][k]), sequence_id=i,
                             sequence_start=(k == 0), sequence_end=(k == steps - 1))
            sums[i] += float(values[i][k])
            assert got == pytest.approx(sums[i]), (i, k)
            assert resp["parameters"]["sequence_id"] == i
    # Ended: the ids are free again, and a step on one of them is a missing sequence.
    with pytest.raises(InferenceServerException) as e:
        step(client, 1.0, sequence_id=ids[0])
    assert "Sequence with provided ID does not exist" in str(e.value)


def test_numeric_and_string_ids_are_separate_sequences(client):
    step(client, 5.0, sequence_id=77, sequence_start=True)
    step(client, 100.0, sequence_id="77", sequence_start=True)
    assert step(client, 1.0, sequence_id=77)[0] == 6.0
    assert step(client, 1.0, sequence_id="77")[0] == 101.0
    step(client, 0.0, sequence_id=77, sequence_end=True)
    step(client, 0.0, sequence_id="77", sequence_end=True)


def test_step_without_id_is_refused_with_ovms_message(client):
    with pytest.raises(InferenceServerException) as e:
        step(client, 1.0, sequence_end=True)
    assert "Sequence ID has not been provided in request inputs" in str(e.value)
