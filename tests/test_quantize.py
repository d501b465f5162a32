"""Quantized weights (int8, bfloat16): bounded error against float32 torch.nn, same
semantics, saved and loaded as stored."""

import numpy as np
import pytest

import fastrnn
from fastrnn.quantized import bfloat16_bits, bfloat16_values

from .helpers import KINDS, make_pair, torch

# Max abs error of outputs against float32 torch.nn on torch-initialised layers with
# standard-normal inputs (the bound the quantized formats promise; docs/performance.md
# states it and the errors measured). Without torch (the core's own run) the reference
# is fastrnn's float32 model, which the full suite checks against torch.nn.
MAX_ABS_ERROR = 3e-2
FORMATS = ["int8", "bfloat16"]


@pytest.fixture(params=["pairs", "widened"])
def bfloat16_products(request, monkeypatch):
    """bfloat16 models both ways: on bfloat16 pairs (``fastrnn.pairs``, rows rounded to
    bfloat16, where the CPU has ``vdpbf16ps``) and on weights widened to float32."""
    from fastrnn import pairs

    if request.param == "pairs" and request.node.callspec.params.get("weights") == "int8":
        pytest.skip("int8 weights take no pairs: the widened run covers them")
    if request.param == "pairs" and not pairs.available():
        pytest.skip("needs a CPU with AVX512_BF16 (vdpbf16ps)")
    monkeypatch.setattr(pairs, "available", lambda: request.param == "pairs")
    return request.param


@pytest.mark.parametrize("weights", FORMATS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_quantized_matches_torch_within_bound(kind, weights, rng, bfloat16_products):
    m, tm = make_pair(kind, 16, 32, "float32", num_layers=2)
    q = m.quantize(weights)
    x = rng.standard_normal((20, 3, 16)).astype(np.float32)
    if tm is None:
        y, _ = m(x)
    else:
        with torch.no_grad():
            y = tm(torch.from_numpy(x))[0].numpy()
    yq, _ = q(x)
    err = np.abs(y - yq).max()
    assert 0 < err <= MAX_ABS_ERROR
    lengths = [20, 7, 13]  # rows of different lengths: each as if run alone
    y_small, _ = q(x, lengths=lengths)
    y_each = [q(x[: lengths[n], n : n + 1])[0][:, 0] for n in range(3)]
    for n in range(3):
        np.testing.assert_allclose(y_small[: lengths[n], n], y_each[n], atol=1e-5)
    state = q.initial_state(3)  # streaming: the quantized step equals the sequence
    for t in range(20):
        y_t, state = q.step(x[t], state)
        np.testing.assert_allclose(y_t, yq[t], atol=1e-5)


def test_bfloat16_rounding_is_to_nearest_even():
    pytest.importorskip("torch")
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5e-3, 3.0e38, 1e-40], np.float32)
    bits = bfloat16_bits(values)
    back = bfloat16_values(bits)
    expected = torch.from_numpy(values).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(back, expected)


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
    with pytest.raises(ValueError, match="weights must be one of"):
        m.quantize("int4")


@pytest.mark.parametrize("weights", FORMATS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_quantized_model_saves_and_loads_as_quantized(kind, suffix, weights, tmp_path):
    """The loaded copy stores the quantized weights and gives bit-identical outputs."""
    m, _ = make_pair(kind, 5, 12, "float32", num_layers=2)
    q = m.quantize(weights)
    assert repr(q).endswith(f"weights={weights})") and "weights=" not in repr(m)
    path = tmp_path / f"q{suffix}"
    fastrnn.save(q, path)
    loaded = fastrnn.load(path)
    assert loaded.weights_format == weights and repr(loaded) == repr(q)
    x = np.random.default_rng(3).standard_normal((7, 2, 5)).astype(np.float32)
    assert np.array_equal(loaded(x)[0], q(x)[0])
    assert np.array_equal(loaded(x[:, :1])[0], q(x[:, :1])[0])  # the int8 kernel path
    y1, _ = loaded.step(x[0], loaded.initial_state(2))
    y2, _ = q.step(x[0], q.initial_state(2))
    assert np.array_equal(y1, y2)
    if suffix == ".safetensors":
        stored = fastrnn.io.load_safetensors(path)[0]
        assert stored["weight_hh_l0"].dtype == (np.int8 if weights == "int8" else np.uint16)
    if suffix == ".safetensors" and weights == "bfloat16" and torch is not None:
        # BF16 as other readers see it
        from safetensors.torch import load_file

        w = load_file(str(path))["weight_hh_l0"]
        assert w.dtype == torch.bfloat16
        np.testing.assert_array_equal(w.float().numpy(), q.state_dict()["weight_hh_l0"])


def test_load_refuses_newer_format_and_unknown_weights(tmp_path):
    import json

    m = fastrnn.GRU(3, 4)
    tensors = m.state_dict()
    for spec, message in (
        ({"format_version": 99, "weights": "float32"}, "format version 99"),
        ({"format_version": 2, "weights": "int4"}, "format 'int4'"),
    ):
        path = tmp_path / "m.safetensors"
        config = {"class": "GRU", "config": m.config(), **spec}
        fastrnn.io.save_safetensors(path, tensors, {"__fastrnn_config__": json.dumps(config)})
        with pytest.raises(ValueError, match=message) as info:
            fastrnn.load(path)
        assert str(path) in str(info.value)


def test_quantized_weights_cannot_go_stale(tmp_path):
    """In-place edits of a quantized model's arrays raise (the int8 copy would go stale)."""
    m, _ = make_pair("lstm", 4, 8, "float32")
    for q in (m.quantize("int8"), None):
        if q is None:
            fastrnn.save(m.quantize("int8"), tmp_path / "q.safetensors")
            q = fastrnn.load(tmp_path / "q.safetensors")
        for p in q.state_dict().values():
            with pytest.raises(ValueError, match="read-only"):
                p[...] = 0
    m.state_dict()["weight_hh_l0"][0, 0] += 1.0  # the float32 model stays editable


def test_bfloat16_tensors_only_where_bfloat16_weights_are_expected(tmp_path):
    """A BF16 tensor is never read as integers: in a float32 model's file, or in place of a
    float parameter of a bfloat16 model's file, it is refused (naming file and tensor)."""
    import json

    m = fastrnn.GRU(3, 4, seed=0)
    q = m.quantize("bfloat16")
    cases = {
        "float32": (m.state_dict(), ["bias_hh_l0"]),
        "bfloat16": (q.quantized_state_dict(), ["weight_ih_l0", "weight_hh_l0", "bias_hh_l0"]),
    }
    for weights, (tensors, as_bf16) in cases.items():
        tensors = dict(tensors)
        tensors["bias_hh_l0"] = bfloat16_bits(tensors["bias_hh_l0"])
        config = {"class": "GRU", "config": m.config(), "format_version": 2, "weights": weights}
        path = tmp_path / f"{weights}.safetensors"
        meta = {"__fastrnn_config__": json.dumps(config)}
        fastrnn.io.save_safetensors(path, tensors, meta, bfloat16=as_bf16)
        with pytest.raises(ValueError, match="bias_hh_l0") as info:
            fastrnn.load(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_batch1_sequence_and_step_on_tiles(kind, weights, rng, bfloat16_products):
    # one row over enough steps: the recurrent product reads the quantized weights packed
    # in tiles (sequence) or as tile views (step); both agree with the untiled path
    from fastrnn.engine import cpu

    m = getattr(fastrnn, kind)(40, 64, num_layers=2)
    q = m.quantize(weights)
    T = cpu.TILES_MIN_STEPS + 4
    x = rng.standard_normal((T, 1, 40)).astype(np.float32)
    y_tiles, _ = q(x)
    keep = cpu.TILES_MIN_STEPS
    cpu.TILES_MIN_STEPS = T + 1
    try:
        y_plain, _ = q(x)
    finally:
        cpu.TILES_MIN_STEPS = keep
    np.testing.assert_allclose(y_tiles, y_plain, rtol=0, atol=1e-5)
    state, steps = None, []
    for t in range(T):
        y_t, state = q.step(x[t], state)
        steps.append(y_t.copy())
    np.testing.assert_allclose(np.stack(steps), y_plain, rtol=0, atol=1e-5)
