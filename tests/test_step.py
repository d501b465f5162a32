"""Streaming ``step`` equals the full-sequence call and allocates nothing per call."""

import numpy as np
import pytest
from conftest import KINDS, make_pair


def _states(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("batch", [None, 1, 3])
def test_step_equals_sequence(kind, dtype, batch, rng):
    m, _ = make_pair(kind, 4, 6, dtype, num_layers=3)
    T = 5
    shape = (T, 4) if batch is None else (T, batch, 4)
    x = rng.standard_normal(shape).astype(dtype)
    y_full, state_full = m(x)
    state = m.initial_state(batch)
    for t in range(T):
        y_t, state = m.step(x[t], state)
        np.testing.assert_allclose(
            y_t, y_full[t], rtol=0, atol=1e-6 if dtype == "float32" else 1e-12
        )
    for a, b in zip(_states(state), _states(state_full)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 if dtype == "float32" else 1e-12)


def test_step_leaves_given_state_alone_and_reuses_buffers(rng):
    m, _ = make_pair("lstm", 4, 6, "float64", num_layers=2)
    x = rng.standard_normal((3, 4))
    s0 = m.initial_state(3)
    y1, s1 = m.step(x, s0)
    y1_copy = y1.copy()
    assert not np.any(s0[0]) and not np.any(s0[1])
    y1b, s1b = m.step(x, s0)  # same input again: same answer, the previous result survives
    np.testing.assert_array_equal(y1b, y1_copy)
    np.testing.assert_array_equal(y1, y1_copy)
    _, s2 = m.step(x, s1b)
    _, s3 = m.step(x, s2)
    assert s3[0] is s1b[0] or s3[0] is s1[0]  # two buffers alternate: no allocation


def test_step_rejects_bidirectional(rng):
    m, _ = make_pair("gru", 4, 6, "float64", bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        m.step(rng.standard_normal((1, 4)), m.initial_state(1))
