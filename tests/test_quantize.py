"""int8 weight quantization: bounded error against float32, same semantics."""

import numpy as np
import pytest
from conftest import KINDS, make_pair

import fastrnn

# Max abs error of outputs against the float32 model on torch-initialised layers with
# standard-normal inputs; docs/performance.md states it.
INT8_MAX_ABS_ERROR = 3e-2


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_int8_matches_float32_within_bound(kind, rng):
    m, _ = make_pair(kind, 16, 32, "float32", num_layers=2)
    q = m.quantize("int8")
    x = rng.standard_normal((20, 3, 16)).astype(np.float32)
    lengths = [20, 7, 13]
    y, _ = m(x, lengths=lengths)
    yq, _ = q(x, lengths=lengths)
    err = np.abs(y - yq).max()
    assert 0 < err <= INT8_MAX_ABS_ERROR
    state = q.initial_state(3)  # streaming: the int8 step equals the int8 sequence
    y_full, _ = q(x)
    for t in range(20):
        y_t, state = q.step(x[t], state)
        np.testing.assert_allclose(y_t, y_full[t], atol=1e-5)


def test_int8_is_inference_only_and_float_model_untouched(rng):
    m = fastrnn.GRU(8, 16, seed=0)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    q = m.quantize()
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(TypeError, match="inference only"):
        q.forward_train(rng.standard_normal((3, 1, 8)).astype(np.float32))
    with pytest.raises(TypeError, match="quantized model"):
        q.load_state_dict(before)
    with pytest.raises(TypeError, match="float32 model"):
        fastrnn.GRU(8, 16, dtype="float64").quantize()
    with pytest.raises(ValueError, match="weights must be 'int8'"):
        m.quantize("int4")
