"""fastrnn_torch against torch.nn: outputs, states and every .grad, on a grid."""

import copy
import os
import threading

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

import fastrnn
import fastrnn_torch as frt

from .bridge_helpers import CELLS, LAYERS, TOL, flat, run_both, twins
from .helpers import TORCH_DTYPE


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("layout", ["seq_first", "batch_first", "unbatched"])
def test_layers_match_torch(kind, num_layers, bidirectional, dtype, layout):
    batch_first = layout == "batch_first"
    m, tm = twins(
        LAYERS,
        kind,
        dtype,
        3,
        5,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
    )
    g = torch.Generator().manual_seed(1)
    shape = {"seq_first": (4, 2, 3), "batch_first": (2, 4, 3), "unbatched": (4, 3)}[layout]
    x = torch.randn(shape, generator=g, dtype=TORCH_DTYPE[dtype])
    D = 2 if bidirectional else 1
    P = m.proj_size or 5 if kind == "lstm_proj" else 5
    lead = (num_layers * D,) if layout == "unbatched" else (num_layers * D, 2)
    h = torch.randn(lead + (P,), generator=g, dtype=x.dtype)
    if kind.startswith("lstm"):
        c = torch.randn(lead + (5,), generator=g, dtype=x.dtype)
        run_both(m, tm, [x, h, c], dtype)
    else:
        run_both(m, tm, [x, h], dtype)
    run_both(m, tm, [x], dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("batched", [True, False])
def test_cells_match_torch(kind, dtype, batched):
    m, tm = twins(CELLS, kind, dtype, 3, 5)
    g = torch.Generator().manual_seed(2)
    lead = (4,) if batched else ()
    x = torch.randn(lead + (3,), generator=g, dtype=TORCH_DTYPE[dtype])
    h = torch.randn(lead + (5,), generator=g, dtype=x.dtype)
    if kind == "lstm":
        run_both(m, tm, [x, h, torch.randn(lead + (5,), generator=g, dtype=x.dtype)], dtype)
    else:
        run_both(m, tm, [x, h], dtype)
    run_both(m, tm, [x], dtype)


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequences(kind, enforce_sorted):
    m, tm = twins(LAYERS, kind, "float64", 3, 5, num_layers=2, bidirectional=True)
    g = torch.Generator().manual_seed(3)
    lengths = [5, 4, 2] if enforce_sorted else [2, 5, 4]
    seqs = [
        torch.randn(n, 3, generator=g, dtype=torch.float64, requires_grad=True) for n in lengths
    ]
    seqs2 = [s.detach().clone().requires_grad_(True) for s in seqs]
    packed = pack_sequence(seqs, enforce_sorted=enforce_sorted)
    packed2 = pack_sequence(seqs2, enforce_sorted=enforce_sorted)
    out, state = m(packed)
    tout, tstate = tm(packed2)
    assert torch.equal(out.batch_sizes, tout.batch_sizes)
    assert (out.data - tout.data).abs().max() < 1e-10
    for a, b in zip(flat(state), flat(tstate)):
        assert (a - b).abs().max() < 1e-10
    w = torch.randn(out.data.shape, generator=g, dtype=torch.float64)
    ((out.data * w).sum() + sum(s.sum() for s in flat(state))).backward()
    ((tout.data * w).sum() + sum(s.sum() for s in flat(tstate))).backward()
    for a, b in zip(seqs, seqs2):
        assert (a.grad - b.grad).abs().max() < 1e-10
    for p, q in zip(m.parameters(), tm.parameters()):
        assert (p.grad - q.grad).abs().max() < 1e-10
    # pack_padded_sequence with an initial state in the caller's batch order
    x = torch.randn(5, 3, 3, generator=g, dtype=torch.float64)
    st = tm(x)[1]
    hx = tuple(torch.randn_like(s) for s in flat(st))
    hx = hx if kind.startswith("lstm") else hx[0]
    p1 = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    o1, s1 = m(p1, hx)
    o2, s2 = tm(p1, hx)
    y1, _ = pad_packed_sequence(o1)
    y2, _ = pad_packed_sequence(o2)
    assert (y1 - y2).abs().max() < 1e-10
    for a, b in zip(flat(s1), flat(s2)):
        assert (a - b).abs().max() < 1e-10


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_gradcheck_and_double_backward(kind):
    m, _ = twins(LAYERS, kind, "float64", 2, 3, num_layers=2, bidirectional=True)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))
    params = list(m.parameters())

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(
            m, dict(zip([n for n, _ in m.named_parameters()], ps))
        ):
            return m(x)[0]

    assert torch.autograd.gradcheck(
        f, (x, *[p.detach().clone().requires_grad_(True) for p in params[:4]])
    )
    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in params[:4]])
    assert torch.autograd.gradgradcheck(f, inputs)


def test_state_dict_is_interchangeable():
    torch.manual_seed(0)
    ours = frt.LSTM(3, 6, num_layers=2, proj_size=2, bidirectional=True)
    theirs = torch.nn.LSTM(3, 6, num_layers=2, proj_size=2, bidirectional=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert repr(ours) == "fastrnn_torch." + repr(theirs)  # same arguments, and says whose
    torch.manual_seed(5)
    a = frt.GRU(3, 4)
    torch.manual_seed(5)
    b = torch.nn.GRU(3, 4)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)  # same initialisation


def test_no_grad_inference_mode_and_frozen_parts():
    m, tm = twins(LAYERS, "lstm", "float32", 3, 5, num_layers=2)
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        y = m(x)[0]
    with torch.inference_mode():
        y2 = m(x)[0]
    assert not y.requires_grad and torch.equal(y, y2)
    assert (y - tm(x)[0]).abs().max() < 2e-5
    m.weight_ih_l0.requires_grad_(False)
    m(x)[0].sum().backward()
    assert m.weight_ih_l0.grad is None and m.weight_hh_l0.grad is not None


def test_dropout_uses_torch_rng_and_eval_disables_it():
    m = frt.GRU(3, 5, num_layers=3, dropout=0.5).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.manual_seed(7)
    y1 = m(x)[0]
    torch.manual_seed(7)
    y2 = m(x)[0]
    y3 = m(x)[0]
    assert torch.equal(y1, y2) and not torch.equal(y2, y3)
    m.eval()
    tm = torch.nn.GRU(3, 5, num_layers=3, dropout=0.5).double().eval()
    tm.load_state_dict(m.state_dict())
    assert (m(x)[0] - tm(x)[0]).abs().max() < 1e-12


def test_dropout_training_matches_torch_with_same_masks(monkeypatch):
    """Masks drawn by the module from torch's RNG; torch run by hand with those masks."""
    m = frt.LSTM(3, 4, num_layers=2, dropout=0.3).double()
    masks = []
    real = torch.Tensor.bernoulli_

    def spy(self, p):
        out = real(self, p)
        masks.append(out.clone())
        return out

    monkeypatch.setattr(torch.Tensor, "bernoulli_", spy)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    y = m(x)[0]
    y.sum().backward()
    (mask,) = masks
    l0 = torch.nn.LSTM(3, 4).double()
    l1 = torch.nn.LSTM(4, 4).double()
    for one, k in ((l0, 0), (l1, 1)):
        for name, p in one.named_parameters():
            p.data.copy_(getattr(m, name.replace("_l0", f"_l{k}")))
    x2 = x.detach().clone().requires_grad_(True)
    ty = l1(l0(x2)[0] * mask / 0.7)[0]
    ty.sum().backward()
    assert (y - ty).abs().max() < 1e-12 and (x.grad - x2.grad).abs().max() < 1e-12


def test_fallback_for_other_dtypes():
    m = frt.GRU(3, 4).to(torch.bfloat16)
    y, _ = m(torch.randn(2, 1, 3, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_convert_and_export(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(3, 4, num_layers=2)
            self.cell = torch.nn.GRUCell(4, 4)
            self.head = torch.nn.Linear(4, 1)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.head(self.cell(y[-1]))

    torch.manual_seed(0)
    net = Net()
    ref = copy.deepcopy(net)
    opt_params = list(net.parameters())
    x = torch.randn(5, 2, 3)
    assert frt.convert(net) is net
    assert type(net.rnn) is frt.LSTM and type(net.cell) is frt.GRUCell
    assert isinstance(net.rnn, torch.nn.RNNBase) and isinstance(net.cell, torch.nn.GRUCell)
    assert all(a is b for a, b in zip(opt_params, net.parameters()))
    assert (net(x) - ref(x)).abs().max() < 1e-5
    frt.export(net.rnn, tmp_path / "rnn.safetensors")
    core = fastrnn.load(tmp_path / "rnn.safetensors")
    y_core, _ = core(x.numpy())
    assert np.abs(y_core - ref.rnn(x)[0].detach().numpy()).max() < 1e-5
    frt.export(torch.nn.RNNCell(3, 2, nonlinearity="relu"), tmp_path / "cell.safetensors")
    assert fastrnn.load(tmp_path / "cell.safetensors").nonlinearity == "relu"


def test_training_loss_curve_matches_torch():
    """50 Adam steps of a small model: the same loss curve as torch.nn."""

    def make(cls):
        torch.manual_seed(0)
        rnn = cls(4, 8, num_layers=2).double()
        head = torch.nn.Linear(8, 1).double()
        return rnn, head

    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 6, 4, generator=g, dtype=torch.float64)
    target = torch.randn(6, 1, generator=g, dtype=torch.float64)
    curves = []
    for cls in (torch.nn.LSTM, frt.LSTM):
        rnn, head = make(cls)
        opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-2)
        losses = []
        for _ in range(50):
            opt.zero_grad()
            loss = ((head(rnn(x)[0][-1]) - target) ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < 0.5 * curves[0][0]
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-8)


def test_two_threads_share_a_module():
    m, tm = twins(LAYERS, "gru", "float32", 8, 16, num_layers=2)
    xs = [torch.randn(20, 3, 8) for _ in range(4)]
    expected = [tm(x)[0].detach() for x in xs]
    errors = []

    def work(i):
        with torch.no_grad():
            for _ in range(20):
                y = m(xs[i % 4])[0]
                if (y - expected[i % 4]).abs().max() > 2e-5:
                    errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_torch_compile_fullgraph():
    from torch._dynamo.testing import CompileCounterWithBackend

    m, tm = twins(LAYERS, "lstm", "float32", 3, 5, num_layers=2, bidirectional=True)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(m, fullgraph=True, backend=counter)
    x = torch.randn(4, 2, 3, requires_grad=True)
    y, (h, c) = compiled(x)
    assert counter.frame_count == 1
    targets = [str(n.target) for g in counter.graphs for n in g.graph.nodes]
    assert "fastrnn.rnn.default" in targets
    assert (y - tm(x)[0]).abs().max() < 2e-5
    (y.sum() + h.sum()).backward()
    x2 = x.detach().clone().requires_grad_(True)
    ty, (th, _) = tm(x2)
    (ty.sum() + th.sum()).backward()
    assert (x.grad - x2.grad).abs().max() < 2e-5
    for p, q in zip(m.parameters(), tm.parameters()):
        assert (p.grad - q.grad).abs().max() < 1e-4


def test_opcheck():
    from fastrnn_torch import _compiled

    m = frt.GRU(2, 3, num_layers=2).double()
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    config = frt.modules._config(m, "GRU", 2, torch.float64)
    args = (
        x,
        list(m._flat_weights),
        torch.zeros(2, 2, 3, dtype=torch.float64),
        x.new_empty((0,)),
        torch.tensor([3, 2]),
        [],
        config,
        True,
    )
    torch.library.opcheck(_compiled.rnn_op, args, test_utils=("test_schema", "test_faketensor"))


def test_torch_export_and_jit_trace():
    """Exported and traced artifacts record torch.nn's operators (they must load where
    fastrnn is not installed; tests/test_bridge_checkpoint.py loads them so)."""
    m, tm = twins(LAYERS, "gru", "float32", 3, 4, num_layers=2)
    m.eval()
    x = torch.randn(5, 2, 3)
    exported = torch.export.export(m, (x,))
    assert (exported.module()(x)[0] - tm(x)[0]).abs().max() < 2e-5
    targets = [str(n.target) for n in exported.graph.nodes]
    assert "aten.gru.input" in targets
    assert not any("fastrnn" in t for t in targets)
    traced = torch.jit.trace(m, (x,), check_trace=False)
    x2 = torch.randn(7, 3, 3)
    assert (traced(x2)[0] - tm(x2)[0]).abs().max() < 2e-5


def test_bench_workloads_run_and_agree(tmp_path):
    """The `fastrnn bench` measurements run and report parity (tiny sizes, one repeat)."""
    from fastrnn_torch import bench, bench_attention

    results = [
        bench.step_workload("GRU", 8, 1, 1),
        bench.sequence_workload("LSTM", 5, 2, 8, 1, 1),
        bench.training_workload("RNN", 5, 2, 8, 1),
        bench.cell_loop_workload("LSTM", 3, 2, 8, 1),
        bench_attention.attention_workload(5, True, True, 1),
        bench_attention.attention_layer_workload("general", 2, 1),
        bench.quantized_workload("LSTM", "step", 8, 1, 1, "int8"),
        bench.quantized_workload("GRU", "seq", 8, 1, 1, "bfloat16"),
        bench.quantized_workload("RNN", "seq64", 8, 1, 1, "bfloat16"),
    ]
    for r in results[:6]:
        assert set(r.times) >= {"fastrnn", "torch"} and max(r.max_abs_diff.values()) < 1e-4
    assert max(r.max_abs_diff["torch"] for r in results[6:]) < 3e-2
    bench.print_table(results)
    written = bench.save_charts(results[:6], results[6:], str(tmp_path), "test machine")
    assert [os.path.basename(p) for p in written] == ["vs_torch.png", "vs_onnxruntime.png"]


@pytest.mark.parametrize("compiled", [False, True])
def test_partly_frozen_weights_match_torch(compiled):
    m, tm = twins(LAYERS, "lstm", "float64", 3, 5, num_layers=2, bidirectional=True)
    for model in (m, tm):
        model.weight_ih_l0.requires_grad_(False)
        model.bias_hh_l1_reverse.requires_grad_(False)
    run = torch.compile(m, backend="aot_eager", fullgraph=True) if compiled else m
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    run(x)[0].sum().backward()
    tm(x2)[0].sum().backward()
    assert (x.grad - x2.grad).abs().max() < 1e-10
    for (name, p), q in zip(m.named_parameters(), tm.parameters()):
        if q.grad is None:
            assert p.grad is None, name
        else:
            assert (p.grad - q.grad).abs().max() < 1e-10, name


def test_modules_keep_no_hidden_copies_of_weights():
    """The bridge caches per configuration an engine Spec, which holds no array, and a
    deleted module's memory goes with it."""
    import dataclasses
    import gc
    import weakref

    from fastrnn_torch import _ops

    m = frt.LSTM(64, 700, num_layers=2)
    x = torch.randn(3, 2, 64)
    m(x)[0].sum().backward()
    config = next(iter(m.__dict__["_fastrnn_config"].values()))
    spec = _ops.spec_for(config)
    assert isinstance(spec, fastrnn.engine.Spec) and spec.hidden_size == 700
    assert not any(isinstance(getattr(spec, f.name), np.ndarray) for f in dataclasses.fields(spec))
    ref = weakref.ref(m.weight_hh_l0)
    del m
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize(
    "make, name, shape",
    [
        (lambda: (frt.GRU(3, 4), torch.nn.GRU(3, 4)), "weight_hh_l0", (300, 4)),
        (lambda: (frt.GRU(3, 4), torch.nn.GRU(3, 4)), "weight_hh_l0", (12, 2)),
        (lambda: (frt.RNN(3, 4), torch.nn.RNN(3, 4)), "weight_ih_l0", (4, 2)),
        (lambda: (frt.LSTM(3, 4), torch.nn.LSTM(3, 4)), "bias_ih_l0", (3,)),
        (lambda: (frt.GRUCell(3, 4), torch.nn.GRUCell(3, 4)), "weight_hh", (12, 2)),
    ],
)
def test_wrong_shaped_parameters_raise_like_torch(make, name, shape):
    """A Parameter of the wrong shape assigned by the user: a RuntimeError as torch.nn
    raises, never an out-of-bounds read (this used to corrupt the heap)."""
    ours, theirs = make()
    cell = isinstance(ours, torch.nn.RNNCellBase)
    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
    for module in (ours, theirs):
        setattr(module, name, torch.nn.Parameter(torch.randn(*shape)))
        with pytest.raises(RuntimeError):
            module(x)


def _outcome(fn):
    """('ok', shapes and dtypes of the tensors returned) or ('raises', exception type)."""
    try:
        out = fn()
    except Exception as exc:  # compared with torch.nn's type below
        return "raises", type(exc)
    flat = []
    stack = [out]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            stack.extend(item)
        else:
            flat.append((tuple(item.shape), item.dtype))
    return "ok", sorted(flat, key=str)


_CORNERS = {
    "batch 0": lambda M: M(3, 4)(torch.randn(5, 0, 3)),
    "seq 0": lambda M: M(3, 4)(torch.randn(0, 2, 3)),
    "int hx": lambda M: M(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 2, 4, dtype=torch.int64)),
    "float64 hx": lambda M: M(3, 4)(
        torch.randn(5, 2, 3), torch.zeros(1, 2, 4, dtype=torch.float64)
    ),
    "bool hx": lambda M: M(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 2, 4, dtype=torch.bool)),
    "cell batch 0": lambda M: M(3, 4)(torch.randn(0, 3)),
    "cell int hx": lambda M: M(3, 4)(torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.int64)),
    "cell float64 hx": lambda M: M(3, 4)(torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.float64)),
    "cell batch mismatch": lambda M: M(3, 4)(torch.randn(2, 3), torch.zeros(3, 4)),
    "cell hidden mismatch": lambda M: M(3, 4)(torch.randn(2, 3), torch.zeros(2, 5)),
    "cell hidden_size 0": lambda M: M(3, 0)(torch.randn(2, 3)),
}


@pytest.mark.parametrize("case", sorted(_CORNERS))
@pytest.mark.parametrize("kind", ["GRU", "RNN"])
def test_zero_sizes_and_state_dtypes_like_torch(case, kind):
    cell = case.startswith("cell")
    ours = getattr(frt, kind + ("Cell" if cell else ""))
    theirs = getattr(torch.nn, kind + ("Cell" if cell else ""))
    assert _outcome(lambda: _CORNERS[case](ours)) == _outcome(lambda: _CORNERS[case](theirs))


def test_lstm_state_dtype_and_cell_batch_messages():
    m = frt.LSTMCell(3, 4)
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="Input batch size 2 doesn't match hidden1 batch size 3"):
        m(x, (torch.zeros(2, 4), torch.zeros(3, 4)))
    with pytest.raises(RuntimeError, match="dtype"):
        frt.LSTM(3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4).long()))


@pytest.mark.parametrize(
    "make",
    [
        lambda: (
            frt.LSTM(2, 3, proj_size=2, num_layers=2, dropout=0.5),
            torch.nn.LSTM(2, 3, proj_size=2, num_layers=2, dropout=0.5),
        ),
        lambda: (frt.GRU(2, 3, bidirectional=True), torch.nn.GRU(2, 3, bidirectional=True)),
        lambda: (frt.RNN(2, 3, nonlinearity="relu"), torch.nn.RNN(2, 3, nonlinearity="relu")),
    ],
)
def test_double_backward_matches_torch_with_packing_and_dropout(make):
    """Gradients of gradients (e.g. a gradient penalty) equal torch.nn's, with variable
    lengths and inter-layer dropout (same seed: the same masks in eval and train)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    ours, theirs = make()
    ours, theirs = ours.double(), theirs.double()
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()  # dropout off: torch.nn's and fastrnn's masks differ
    x0 = torch.randn(4, 3, 2, dtype=torch.float64)
    lengths = torch.tensor([4, 2, 3])
    penalties = []
    for module in (ours, theirs):
        x = x0.clone().requires_grad_(True)
        out, _ = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
        (gx,) = torch.autograd.grad(out.data.square().sum(), x, create_graph=True)
        penalty = gx.square().sum()
        penalty.backward()
        penalties.append(
            (penalty.detach(), {n: p.grad.clone() for n, p in module.named_parameters()})
        )
    (p1, g1), (p2, g2) = penalties
    assert (p1 - p2).abs() < 1e-10 * max(1.0, p2.abs())
    for name in g1:
        assert (g1[name] - g2[name]).abs().max() < 1e-9, name


def test_cells_double_backward():
    cell = frt.LSTMCell(2, 3).double()
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, h, c: cell(x, (h, c))[0], (x, h, c))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_batched_gradients_and_vmap(kind):
    """autograd.grad(..., is_grads_batched=True) equals torch.nn's; torch.func.vmap over a
    module equals a loop (torch.nn's own layers have no batching rule)."""
    torch.manual_seed(0)
    ours = getattr(frt, kind)(2, 3, num_layers=2).double()
    theirs = getattr(torch.nn, kind)(2, 3, num_layers=2).double()
    theirs.load_state_dict(ours.state_dict())
    x0 = torch.randn(4, 2, 2, dtype=torch.float64)
    found = []
    for module in (ours, theirs):
        x = x0.clone().requires_grad_(True)
        y = module(x)[0]
        basis = torch.eye(y.numel(), dtype=torch.float64).reshape(-1, *y.shape)[:6]
        (g,) = torch.autograd.grad(y, x, basis, is_grads_batched=True)
        found.append(g)
    assert (found[0] - found[1]).abs().max() < 1e-10
    xs = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        looped = torch.stack([ours(x)[0] for x in xs])
    mapped = torch.func.vmap(lambda x: ours(x)[0])(xs)
    assert (mapped - looped).abs().max() < 1e-12


@pytest.mark.parametrize("kind", sorted(CELLS))
# one row (row loops), 20 rows on panels (the kernel's products), 20 rows through
# torch's BLAS (weights past CELL_PANEL_WEIGHTS: made 0 here)
@pytest.mark.parametrize("batch, blas", [(1, False), (20, False), (20, True)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cell_loops_match_torch(kind, batch, blas, bias, dtype, monkeypatch):
    """A cell stepped in a Python loop (the decoder pattern): outputs and every gradient
    through five chained steps, with one parameter frozen."""
    from fastrnn_torch import _cells

    if blas:
        monkeypatch.setattr(_cells, "CELL_PANEL_WEIGHTS", 0)
        _cells._small.cache_clear()
    m, tm = twins(CELLS, kind, dtype, 3, 5, bias=bias)
    for module in (m, tm):
        module.weight_ih.requires_grad_(False)
    g = torch.Generator().manual_seed(4)
    xs = torch.randn(5, batch, 3, generator=g, dtype=TORCH_DTYPE[dtype])
    results = []
    for module in (m, tm):
        x = xs.clone().requires_grad_(True)
        h = torch.zeros(batch, 5, dtype=x.dtype, requires_grad=True)
        state = (h, torch.zeros_like(h)) if kind == "lstm" else h
        loss = 0
        for t in range(5):
            state = module(x[t], state)
            out = state[0] if kind == "lstm" else state
            loss = loss + (out * (t + 1)).sin().sum()
        loss.backward()
        grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
        results.append((float(loss), x.grad, h.grad, grads))
    (l1, gx1, gh1, gp1), (l2, gx2, gh2, gp2) = results
    tol = TOL[dtype]
    assert abs(l1 - l2) < tol * max(1.0, abs(l2))
    assert (gx1 - gx2).abs().max() < tol and (gh1 - gh2).abs().max() < tol
    assert gp1.keys() == gp2.keys() and "weight_ih" not in gp1
    for name in gp1:
        assert (gp1[name] - gp2[name]).abs().max() < tol * max(1.0, gp2[name].abs().max()), name
    _cells._small.cache_clear()  # (the size limit restored for the next test)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_gradients_arriving_expanded(kind):
    """A state used only by ``.sum()`` gets its gradient as an expanded (stride 0)
    tensor, not contiguous: the cells' kernels read a contiguous copy, kept alive for the
    whole call (a copy freed early let the next one reuse its memory, and dh read dc's
    values). Same tensor as h0 and c0, as a loop started from ``(h, h)`` passes."""
    m, tm = twins(CELLS, kind, "float64", 3, 5)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    found = []
    for module in (m, tm):
        h = (2 * torch.rand(2, 5, generator=torch.Generator().manual_seed(6))).double()
        h.requires_grad_(True)
        out = module(x, (h, h) if kind == "lstm" else h)
        loss = out[0].sum() + 3 * out[1].sum() if kind == "lstm" else out.sum()
        found.append(torch.autograd.grad(loss, [h, *module.parameters()]))
    for ours, theirs in zip(*found):
        assert (ours - theirs).abs().max() < 1e-12


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_plain_calls_take_the_short_path(kind):
    """The loop-over-time call (2-D contiguous CPU input and state of the module's
    dtype) is recognised by ``_plain_step`` and matches torch.nn, with and without a
    state; every other call is handed to ``forward``'s general path (None), which
    keeps torch.nn's checks and messages."""
    m, tm = twins(CELLS, kind, "float64", 3, 5)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    h = torch.randn(4, 5, generator=g, dtype=torch.float64)
    lstm = kind == "lstm"
    for state in (None, (h, 2 * h) if lstm else h):
        ours, theirs = m._plain_step(x, state), tm(x, state)
        for a, b in zip(flat(ours), flat(theirs)):
            assert (a - b).abs().max() < 1e-12
    declined = [
        (x[0], None),  # unbatched
        (x.t().contiguous().t(), None),  # not contiguous
        (x.float(), None),  # another dtype than the weights'
        (x, (h.float(), h) if lstm else h.float()),  # a state of another dtype
        (x, (h[:, :4], h) if lstm else h[:, :4]),  # a state of the wrong width
        (x, (h.t().contiguous().t(), h) if lstm else h.t().contiguous().t()),
    ]
    if lstm:
        declined.append((x, [h, h]))  # a list, not a tuple: torch.nn's checks decide
    for args in declined:
        assert m._plain_step(*args) is None


def test_bench_settles_until_a_peers_spinning_threads_stop():
    """A peer's pool spinning after its call (onnxruntime's for about 55 ms here) must be
    idle before the next engine is timed: ``settle`` waits while another thread runs."""
    import threading
    import time

    from fastrnn_torch import bench

    stop = time.perf_counter() + 0.15

    def spin():
        while time.perf_counter() < stop:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.01)
    assert bench._others_running()
    bench.settle()
    assert time.perf_counter() >= stop - 0.01  # (it waited for the spinner)
    spinner.join()
    start = time.perf_counter()
    bench.settle()
    assert time.perf_counter() - start < bench.SETTLE_MAX


@pytest.fixture
def every_loop(monkeypatch):
    """Every cell step with trainable weights joins its module's Loop (the weights'
    gradients made once per backward pass), whatever the layer's size."""
    from fastrnn_torch import _cells

    monkeypatch.setattr(_cells, "LOOP_MIN_WEIGHTS", -1)
    _cells._loop_pays.cache_clear()
    yield _cells
    _cells._loop_pays.cache_clear()


def _cell_loop(module, xs, h, kind, T):
    state = (h, torch.zeros_like(h)) if kind == "lstm" else h
    loss = 0
    for t in range(T):
        state = module(xs[t], state)
        out = state[0] if kind == "lstm" else state
        loss = loss + (out * (t + 1)).sin().sum()
    return loss


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("frozen", [None, "weight_ih", "bias_hh"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cell_loop_weight_gradients_match_torch(kind, batch, frozen, dtype, every_loop):
    """Steps that leave their gate gradients to the loop's weights node: every gradient
    as torch.nn's, after passes that do not reach the weights (``autograd.grad`` of the
    initial state: nothing of theirs may count), twice with ``retain_graph`` (the
    gradients accumulate), and for two loops run before one backward."""
    m, tm = twins(CELLS, kind, dtype, 3, 5)
    for module in (m, tm):
        if frozen:
            getattr(module, frozen).requires_grad_(False)
    g = torch.Generator().manual_seed(7)
    xs = torch.randn(4, batch, 3, generator=g, dtype=TORCH_DTYPE[dtype])
    found = []
    for module in (m, tm):
        h = torch.zeros(batch, 5, dtype=xs.dtype, requires_grad=True)
        loss = _cell_loop(module, xs, h, kind, 4)
        (dh,) = torch.autograd.grad(loss, [h], retain_graph=True)
        loss.backward(retain_graph=True)
        loss.backward()
        second = _cell_loop(module, xs * 2, h, kind, 3) + _cell_loop(module, xs, h, kind, 2)
        second.backward()
        found.append([dh, h.grad] + [p.grad for p in module.parameters() if p.requires_grad])
    tol = TOL[dtype]
    for ours, theirs in zip(*found, strict=True):
        assert (ours - theirs).abs().max() < tol * max(1.0, theirs.abs().max())
    assert isinstance(m.__dict__.get("_fastrnn_loop"), every_loop.Loop)


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("loop", [False, True])
def test_chained_cells_double_backward_matches_torch(kind, loop, monkeypatch):
    """Gradients, and gradients of gradients, through chained steps: a step's state comes
    from the steps before, which used the same weights (each step's graph-building
    backward must stop at its inputs, not count the earlier steps' weight gradients
    again). With ``loop`` the steps' weight gradients reach the loop's weights node."""
    from fastrnn_torch import _cells

    if loop:
        monkeypatch.setattr(_cells, "LOOP_MIN_WEIGHTS", -1)
    _cells._loop_pays.cache_clear()
    m, tm = twins(CELLS, kind, "float64", 3, 5)
    xs = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    found = []
    for module in (m, tm):
        h = torch.rand(2, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        h.requires_grad_(True)
        loss = _cell_loop(module, xs, h, kind, 3)
        grads = torch.autograd.grad(loss, [h, *module.parameters()], create_graph=True)
        penalty = sum((g**2).sum() for g in grads)
        second = torch.autograd.grad(penalty, list(module.parameters()))
        found.append([g.detach() for g in grads] + list(second))
    _cells._loop_pays.cache_clear()
    for ours, theirs in zip(*found, strict=True):
        assert (ours - theirs).abs().max() < 1e-10 * max(1.0, theirs.abs().max())


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_chained_sequences_double_backward_matches_torch(kind):
    """Gradients of gradients through two calls chained by their state (truncated BPTT
    without the detach): the second call's graph-building backward stops at its
    initial state."""
    m, tm = twins(LAYERS, kind, "float64", 3, 4)
    xs = torch.randn(2, 4, 2, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    found = []
    for module in (m, tm):
        y1, state = module(xs[0])
        y2, _ = module(xs[1], state)
        loss = (y1.sin() * 2).sum() + y2.sin().sum()
        grads = torch.autograd.grad(loss, list(module.parameters()), create_graph=True)
        penalty = sum((g**2).sum() for g in grads)
        second = torch.autograd.grad(penalty, list(module.parameters()))
        found.append([g.detach() for g in grads] + list(second))
    for ours, theirs in zip(*found, strict=True):
        assert (ours - theirs).abs().max() < 1e-10 * max(1.0, theirs.abs().max())


def test_cell_loops_leave_nothing_behind(every_loop):
    """A loop is freed once its graph is: nothing accumulates over training steps."""
    import gc
    import weakref

    m = frt.LSTMCell(3, 4)
    seen = []
    for _ in range(3):
        x = torch.randn(2, 3)
        h = (torch.zeros(2, 4), torch.zeros(2, 4))
        for _ in range(3):
            h = m(x, h)
        h[0].sum().backward()
        seen.append(weakref.ref(m.__dict__["_fastrnn_loop"]))
    del h
    gc.collect()
    assert [r() is None for r in seen] == [True, True, False]  # (the last one is cached)


# (the reentrant checkpoint warns when no tensor argument takes a gradient: LSTM's state
# is a tuple, which it does not look into; torch.nn's cell gets the same call)
@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_loop_trains_like_torch_with_an_optimizer_and_checkpoints(kind, every_loop):
    """Training iterations (zero_grad, backward, an optimizer step that edits the weights
    in place) with some steps under activation checkpointing, non-reentrant and
    reentrant (whose backward recomputes the steps and runs a backward of its own):
    the weights end as torch.nn's."""
    from torch.utils.checkpoint import checkpoint

    m, tm = twins(CELLS, kind, "float64", 3, 5)
    xs = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    found = []
    for module in (m, tm):
        opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        for reentrant in (False, True, False):
            opt.zero_grad()
            h = torch.zeros(2, 5, dtype=torch.float64)
            state = (h, h) if kind == "lstm" else h
            loss = 0
            for t in range(4):
                if t % 2:
                    state = checkpoint(module, xs[t], state, use_reentrant=reentrant)
                else:
                    state = module(xs[t], state)
                loss = loss + ((state[0] if kind == "lstm" else state) ** 2).sum()
            loss.backward()
            opt.step()
        found.append([p.detach().clone() for p in module.parameters()])
    for ours, theirs in zip(*found, strict=True):
        assert (ours - theirs).abs().max() < 1e-12 * max(1.0, theirs.abs().max())
