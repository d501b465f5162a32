"""Streaming ``step`` equals the full-sequence call and allocates nothing per call."""

import numpy as np
import pytest

from .helpers import KINDS, make_pair


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


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_interleaved_streams_on_one_model(kind, rng):
    """The example of the reliability issue, then five streams stepped round-robin: each
    equals the same stream stepped alone."""
    m, _ = make_pair(kind, 4, 6, "float64", num_layers=2)
    x = rng.standard_normal((1, 4))
    y1, s1 = m.step(x)
    y2, s2 = m.step(2 * x)
    kept = [a.copy() for a in _states(s2)]
    m.step(x, s1)
    for a, b in zip(_states(s2), kept):
        np.testing.assert_array_equal(a, b)  # the second stream's state survived
    T, streams = 6, 5
    xs = rng.standard_normal((streams, T, 1, 4))
    alone = [m(xs[s])[0][:, 0] for s in range(streams)]
    states = [m.initial_state(1) for _ in range(streams)]
    outs = [[] for _ in range(streams)]
    for t in range(T):
        for s in range(streams):
            y, states[s] = m.step(xs[s, t], states[s])
            outs[s].append(y[0].copy())
    for s in range(streams):
        np.testing.assert_allclose(np.array(outs[s]), alone[s], rtol=0, atol=1e-12)


def test_streaming_memory_is_bounded(rng):
    from fastrnn import streaming

    m, _ = make_pair("gru", 3, 4, "float32")
    for batch in range(1, 40):
        m.step(rng.standard_normal((batch, 3)).astype(np.float32))
    assert len(m._streams) <= streaming.MAX_SHAPES
    x = rng.standard_normal((1, 3)).astype(np.float32)
    first = m.step(x)[1]
    for _ in range(3 * streaming.MAX_STREAMS):
        m.step(x)  # a new stream each time
    ws = m._streams._workspaces[1, False]
    assert len(ws.streams) <= streaming.MAX_STREAMS
    assert len(ws.owner) == 3 * len(ws.streams)
    y, _ = m.step(x, first)  # a dropped stream's state still works
    np.testing.assert_allclose(y, m(np.stack([x, x]))[0][1], rtol=0, atol=1e-6)


def test_step_from_threads_equals_serial(rng):
    import threading

    m, _ = make_pair("lstm", 4, 8, "float64")
    xs = rng.standard_normal((4, 30, 2, 4))
    expected = [m(x)[0] for x in xs]
    got = [None] * len(xs)

    def run(i):
        state, ys = m.initial_state(2), []
        for t in range(xs.shape[1]):
            y, state = m.step(xs[i, t], state)
            ys.append(y.copy())
        got[i] = np.array(ys)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind, hidden", [("lstm", 16), ("gru", 64), ("rnn_tanh", 64)])
def test_step_on_tile_views_equals_sequence_and_sees_weight_edits(kind, hidden, dtype, rng):
    # one row and gate widths that are whole tiles: the step reads its weights as tile
    # views (``fastrnn.tiles.tile_view``) of the model's own arrays where the CPU's
    # vectors make those pay (AVX2), else the arrays as stored
    from fastrnn._jit import VECTOR_BYTES
    from fastrnn.tiles import tile_view

    m, _ = make_pair(kind, hidden, hidden, dtype, num_layers=2)
    viewed = tile_view(np.ascontiguousarray(m.state_dict()["weight_hh_l0"].T)) is not None
    assert viewed == (VECTOR_BYTES == 32)
    x = rng.standard_normal((6, 1, hidden)).astype(dtype)
    atol = 1e-5 if dtype == "float32" else 1e-12
    y_full, _ = m(x[:3])
    state = None
    for t in range(3):
        y_t, state = m.step(x[t], state)
        np.testing.assert_allclose(y_t, y_full[t], rtol=0, atol=atol)
    m.state_dict()["weight_hh_l1"][...] *= 0.5  # in place: the next step must see it
    twin, _ = make_pair(kind, hidden, hidden, dtype, num_layers=2)
    twin.load_state_dict(m.state_dict())
    y_twin, _ = twin(
        x[3:], tuple(s.copy() for s in _states(state)) if kind == "lstm" else state.copy()
    )
    for t in range(3, 6):
        y_t, state = m.step(x[t], state)
        np.testing.assert_allclose(y_t, y_twin[t - 3], rtol=0, atol=atol)
