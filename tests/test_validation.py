"""Bad input gives a clear error naming the argument, expected and received."""

import numpy as np
import pytest

import fastrnn


@pytest.fixture
def lstm():
    return fastrnn.LSTM(4, 6, num_layers=2, dtype="float64", seed=0)


def test_wrong_dtype_is_not_cast(lstm):
    with pytest.raises(TypeError, match=r"input must have dtype float64.*got float32"):
        lstm(np.zeros((3, 2, 4), np.float32))
    with pytest.raises(TypeError, match="input must be a numpy array"):
        lstm([[0.0] * 4])


@pytest.mark.parametrize("shape", [(4,), (1, 2, 3, 4), (3, 2, 5), (3, 5)])
def test_wrong_input_shape(lstm, shape):
    with pytest.raises(ValueError, match=r"input must have shape .*got"):
        lstm(np.zeros(shape))


def test_wrong_hx(lstm):
    x = np.zeros((3, 2, 4))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2, 6\); got \(1, 2, 6\)"):
        lstm(x, (np.zeros((1, 2, 6)), np.zeros((2, 2, 6))))
    with pytest.raises(ValueError, match=r"c0 must have shape \(2, 2, 6\); got \(2, 3, 6\)"):
        lstm(x, (np.zeros((2, 2, 6)), np.zeros((2, 3, 6))))
    with pytest.raises(TypeError, match="tuple"):
        lstm(x, np.zeros((2, 2, 6)))
    gru = fastrnn.GRU(4, 6, dtype="float64")
    with pytest.raises(ValueError, match=r"hx must have shape \(1, 2, 6\)"):
        gru(x, np.zeros((1, 3, 6)))
    with pytest.raises(TypeError, match="hx must have dtype float64"):
        gru(x, np.zeros((1, 2, 6), np.float32))


@pytest.mark.parametrize(
    "lengths, match",
    [
        ([1, 2, 3], r"lengths must have shape \(2,\)"),
        ([0, 2], r"lengths must lie in \[1, seq_len=3\]"),
        ([4, 2], r"lengths must lie in \[1, seq_len=3\]"),
        ([1.5, 2], "lengths must be integers"),
    ],
)
def test_bad_lengths(lstm, lengths, match):
    with pytest.raises((ValueError, TypeError), match=match):
        lstm(np.zeros((3, 2, 4)), lengths=lengths)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_size must be an integer >= 1; got 0"):
        fastrnn.LSTM(3, 0)
    with pytest.raises(ValueError, match="proj_size must be smaller"):
        fastrnn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="dropout"):
        fastrnn.GRU(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="nonlinearity"):
        fastrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="dtype must be 'float32' or 'float64'; got float16"):
        fastrnn.GRU(3, 4, dtype="float16")


def test_state_dict_keys_and_shapes(lstm):
    sd = dict(lstm.state_dict())
    sd["weight_xx_l0"] = sd.pop("weight_ih_l0")
    with pytest.raises(
        ValueError,
        match=r"missing keys \['weight_ih_l0'\].*unexpected keys "
        r"\['weight_xx_l0'\]",
    ):
        lstm.load_state_dict(sd)
    sd = dict(lstm.state_dict())
    sd["bias_hh_l1"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"bias_hh_l1.*\(24,\); got \(5,\)"):
        lstm.load_state_dict(sd)
    sd = {k: v.copy() for k, v in lstm.state_dict().items()}
    sd["weight_hh_l0"][0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        lstm.load_state_dict(sd)


def test_step_and_cell_validation(lstm):
    with pytest.raises(ValueError, match=r"x_t must have shape \(batch, 4\)"):
        lstm.step(np.zeros((2, 5)), lstm.initial_state(2))
    with pytest.raises(ValueError, match=r"state\[0\] \(h\) must have shape \(2, 2, 6\)"):
        lstm.step(np.zeros((2, 4)), lstm.initial_state(3))
    cell = fastrnn.GRUCell(4, 6)
    with pytest.raises(ValueError, match=r"input must have shape \(batch, 4\)"):
        cell(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 6\); got \(2, 5\)"):
        cell(np.zeros((2, 4), np.float32), np.zeros((2, 5), np.float32))


_BAD_CALLS = {
    "initial_state(-1)": (lambda m: m.initial_state(-1), ValueError, "batch_size"),
    "initial_state(2.5)": (lambda m: m.initial_state(2.5), ValueError, "batch_size"),
    "seed=-1": (lambda m: fastrnn.GRU(3, 4, seed=-1), ValueError, "seed"),
    "seed='a'": (lambda m: fastrnn.GRU(3, 4, seed="a"), ValueError, "seed"),
    "nonlinearity list": (
        lambda m: fastrnn.RNN(3, 4, nonlinearity=["tanh"]),
        ValueError,
        "nonlinearity",
    ),
    "cell nonlinearity list": (
        lambda m: fastrnn.RNNCell(3, 4, nonlinearity=["tanh"]),
        ValueError,
        "nonlinearity",
    ),
    "load_state_dict(None)": (lambda m: m.load_state_dict(None), TypeError, "state_dict"),
    "dtype=None": (lambda m: fastrnn.GRU(3, 4, dtype=None), TypeError, "dtype"),
    "dropout nan": (
        lambda m: fastrnn.GRU(3, 4, num_layers=2, dropout=float("nan")),
        ValueError,
        "dropout",
    ),
    "rng='x'": (
        lambda m: fastrnn.GRU(3, 4, num_layers=2, dropout=0.5).forward_train(
            np.zeros((2, 1, 3), np.float32), rng="x"
        ),
        TypeError,
        "rng",
    ),
    "integer hx": (
        lambda m: m(np.zeros((2, 1, 3), np.float32), (np.zeros((1, 1, 4), np.int64),) * 2),
        TypeError,
        "h0.*float32",
    ),
    "bool hx": (
        lambda m: m(np.zeros((2, 1, 3), np.float32), (np.zeros((1, 1, 4), bool),) * 2),
        TypeError,
        "h0",
    ),
    "attention without features": (
        lambda m: fastrnn.attention.scaled_dot_product(*(np.zeros((1, 2, 0), np.float32),) * 3),
        ValueError,
        "query",
    ),
    "save path None": (lambda m: fastrnn.save(m, None), TypeError, "path"),
    "save a dict": (lambda m: fastrnn.save({}, "x.npz"), TypeError, "model"),
    "clip norm_type nan": (
        lambda m: fastrnn.clip_grad_norm([np.ones(2)], 1.0, float("nan")),
        ValueError,
        "norm_type",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
def test_bad_arguments_name_themselves(case):
    call, error, pattern = _BAD_CALLS[case]
    with pytest.raises(error, match=pattern):
        call(fastrnn.LSTM(3, 4))


def test_numpy_numbers_are_accepted_like_python_numbers():
    m = fastrnn.GRU(np.int64(3), np.int32(4), num_layers=np.int64(2), dropout=np.float32(0.25))
    assert m.dropout == pytest.approx(0.25) and m.hidden_size == 4
    y, _, tape = m.forward_train(np.zeros((2, 1, 3), np.float32), rng=7)  # an integer seed
    assert y.shape == (2, 1, 4)


@pytest.mark.parametrize("call", ["forward", "step", "train", "cell"])
def test_parameters_reshaped_in_place_are_refused_before_any_kernel(call):
    """No out-of-bounds read whatever a user does to the arrays state_dict() hands out."""
    model = fastrnn.GRUCell(3, 4) if call == "cell" else fastrnn.GRU(3, 4)
    x = np.zeros((2, 3) if call in ("step", "cell") else (5, 2, 3), np.float32)
    if call == "step":
        model.step(x)  # the workspace exists before the edit
    # (W_ih/W_hh are stored column-major: NumPy itself refuses to reshape them in place)
    name = "bias_hh" if call == "cell" else "bias_hh_l0"
    model.state_dict()[name].shape = (2, 6)  # same bytes, other shape
    with pytest.raises(ValueError, match="shape"):
        if call == "forward":
            model(x)
        elif call == "step":
            model.step(x)
        elif call == "train":
            model.forward_train(x)
        else:
            model(x)
