"""fastrnn's thread count: the setting, parity with torch.nn at 1 and 2 threads, results
identical for any count, and no deadlock when Python threads run models at once."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import engine, threads

from .helpers import KINDS, check_grads, flat_state


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_set_num_threads_rejects_what_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"^n must be a positive integer"):
        fastrnn.set_num_threads(bad)


def test_more_threads_than_cpus_are_clamped_with_a_warning(four_cpus):
    with pytest.warns(RuntimeWarning, match="more than the 4 CPU"):
        fastrnn.set_num_threads(9)
    assert fastrnn.get_num_threads() == 4
    fastrnn.set_num_threads(np.int64(2))  # NumPy integers are integers
    assert fastrnn.get_num_threads() == 2


def _fresh_count(env):
    code = "import fastrnn; print(fastrnn.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k != "FASTRNN_NUM_THREADS"} | env
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_default_is_the_process_affinity_and_the_environment_overrides_it():
    done = _fresh_count({})
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(os.sched_getaffinity(0))
    done = _fresh_count({"FASTRNN_NUM_THREADS": "1"})
    assert int(done.stdout) == 1
    done = _fresh_count({"FASTRNN_NUM_THREADS": "many"})
    assert done.returncode != 0
    assert "FASTRNN_NUM_THREADS must be a positive integer; got 'many'" in done.stderr


def test_split_keeps_every_piece_at_least_min_rows():
    assert threads.split(10, 4, threads=2) == [(0, 5), (5, 10)]
    assert threads.split(7, 4, threads=2) == [(0, 7)]
    assert threads.split(64, 16, threads=3) == [(0, 21), (21, 42), (42, 64)]
    assert threads.split(0, 4, threads=2) == [(0, 0)]


# Batches that split on 2 threads, below BLAS_MIN_BATCH (kernel loop) and above (BLAS),
# and one too small to split (the directions run on threads of their own instead).
SPLIT_BATCHES = [1, 2 * engine.cpu.MIN_THREAD_ROWS, 2 * engine.cpu.BLAS_MIN_PIECE + 3]


@pytest.mark.parametrize("B", SPLIT_BATCHES)
@pytest.mark.parametrize("threads_", [1, 2])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_match_torch_at_1_and_2_threads(kind, threads_, B, rng, four_cpus):
    fastrnn.set_num_threads(threads_)
    check_grads(kind, "float32", rng, T=6, B=B, num_layers=2, bidirectional=True, with_lengths=True)


@pytest.mark.parametrize("B", [b for b in SPLIT_BATCHES if b < engine.BLAS_MIN_BATCH])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_results_are_identical_for_any_thread_count(kind, B, rng, four_cpus):
    """Bit for bit where every product is fastrnn's own kernel (docs/performance.md)."""
    kwargs = {"proj_size": 3} if kind == "LSTM" else {}
    m = getattr(fastrnn, kind)(5, 6, num_layers=2, bidirectional=True, **kwargs)
    x = rng.standard_normal((7, B, 5)).astype(np.float32)
    lengths = rng.integers(1, 8, B)
    gy = rng.standard_normal((7, B, 2 * m.output_size)).astype(np.float32)
    runs = []
    for n in (1, 2, 3):
        fastrnn.set_num_threads(n)
        y, state, tape = m.forward_train(x, lengths=lengths)
        grads = m.backward(tape, gy)
        runs.append([y, *flat_state(state), grads.input, *grads.params.values()])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("T", [0, 1, 9])
def test_python_threads_running_models_at_once_do_not_deadlock(T, rng, four_cpus):
    """Two Python threads, each setting its own thread count and running forward and
    backward, at once; sequences of length 0 (an error, as in torch.nn) and 1 included."""
    m = fastrnn.LSTM(4, 5, num_layers=2)
    x = rng.standard_normal((T, 2 * engine.BLAS_MIN_BATCH, 4)).astype(np.float32)
    expected = m(x)[0] if T else None
    errors, results = [], []

    def worker(n):
        try:
            for _ in range(5):
                fastrnn.set_num_threads(n)
                if not T:
                    with pytest.raises(ValueError, match="input must have seq_len >= 1"):
                        m(x)
                    continue
                y, _state = m(x)
                y2, _, tape = m.forward_train(x)
                m.backward(tape, np.ones_like(y2))
                results.append(y)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a thread team deadlocked"
    assert not errors, errors
    assert len(results) == (10 if T else 0)
    for y in results:
        np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_a_team_matches_torch_and_one_thread(kind, B, rng, four_cpus, monkeypatch):
    """A small batch (too small to split by rows) whose layers are big enough for a team
    of threads split by hidden units."""
    import torch

    from fastrnn import team

    teams = []
    run = team.run
    monkeypatch.setattr(team, "run", lambda tasks, bar: teams.append(len(tasks)) or run(tasks, bar))

    from .helpers import assert_close, make_pair

    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[kind]
    H = 1
    while gates * H * H < engine.cpu.TEAM_MIN_WORK:
        H *= 2
    T = -(-engine.cpu.TEAM_MIN_SEQUENCE // (gates * H * H))  # a sequence long enough
    m, tm = make_pair(kind, 8, H, "float32", num_layers=2)  # (two directions: one each)
    x = rng.standard_normal((T, B, 8)).astype(np.float32)
    fastrnn.set_num_threads(1)
    y1, _ = m(x)
    fastrnn.set_num_threads(2)
    y2, state = m(x)
    assert teams == [2] * 2  # every layer
    with torch.no_grad():
        ty, tstate = tm(torch.from_numpy(x))
    assert_close(y2, ty.numpy(), "float32", "output")
    if kind == "lstm":
        assert_close(state[1], tstate[1].numpy(), "float32", "c_n")
    # A member's kernel is compiled apart from the one-thread loop: the same sums,
    # rounded within a unit or two of float32's last place.
    np.testing.assert_allclose(y2, y1, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weights", ["int8", "bfloat16"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_team_runs_quantized_weights_as_one_thread_does(
    kind, weights, B, rng, four_cpus, monkeypatch
):
    """Each member packs its columns of the stored weights (and of the int8 scales)."""
    from fastrnn import team

    teams = []
    run = team.run
    monkeypatch.setattr(team, "run", lambda tasks, bar: teams.append(len(tasks)) or run(tasks, bar))
    gates = {"LSTM": 4, "GRU": 3}[kind]
    H = 1
    while gates * H * H < engine.cpu.TEAM_MIN_WORK:
        H *= 2
    T = -(-engine.cpu.TEAM_MIN_SEQUENCE // (gates * H * H))
    q = getattr(fastrnn, kind)(8, H).quantize(weights)
    x = rng.standard_normal((T, B, 8)).astype(np.float32)
    fastrnn.set_num_threads(1)
    y1, s1 = q(x)
    fastrnn.set_num_threads(2)
    y2, s2 = q(x)
    assert teams == [2]
    # the same sums, the member's kernel compiled apart (see the float test above)
    np.testing.assert_allclose(y2, y1, rtol=1e-6, atol=1e-6)
    for a, b in zip(flat_state(s2), flat_state(s1)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two CPUs to run on",
)
def test_team_members_are_held_on_cpus_of_their_own_while_they_run():
    """Left to the scheduler, two team members (which wait for each other every step)
    were put on one CPU here for whole calls (docs/performance.md); the caller's own
    affinity comes back afterwards, also when a member fails."""
    from fastrnn import team

    before = os.sched_getaffinity(0)
    seen = []

    def piece(*_):
        seen.append(os.sched_getaffinity(0))

    def failing(*_):
        raise RuntimeError("piece failed")

    for run in (
        lambda: threads.run(piece, [(0,), (1,)], hold=True),
        lambda: team.run([piece, piece], np.zeros(3, np.int64)),
    ):
        seen.clear()
        run()
        assert len(seen) == 2 and all(len(cpus) == 1 for cpus in seen)
        assert seen[0] != seen[1] and seen[0] | seen[1] <= before
        assert os.sched_getaffinity(0) == before
    with pytest.raises(RuntimeError, match="piece failed"):
        threads.run(failing, [(0,), (1,)], hold=True)
    with pytest.raises(RuntimeError, match="piece failed"):
        team.run([failing, piece], np.zeros(3, np.int64))
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_computes_on_threads_of_its_own(rng, four_cpus):
    """The parent's pool threads do not exist in a forked child (a DataLoader worker,
    say): the child starts its own instead of waiting on them forever."""
    m = fastrnn.GRU(4, 5)
    x = rng.standard_normal((3, 2 * engine.BLAS_MIN_BATCH, 4)).astype(np.float32)
    fastrnn.set_num_threads(2)
    expected = m(x)[0]  # the parent's pool is running
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it computes the same outputs
        code = 1
        try:
            code = 0 if np.array_equal(m(x)[0], expected) else 2
        finally:
            os._exit(code)
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(status) == 0


def test_an_error_in_a_piece_reaches_the_caller_and_the_pool_goes_on(four_cpus):
    fastrnn.set_num_threads(3)
    done = []

    def piece(start, stop):
        if start == 1:
            raise RuntimeError("piece 1 failed")
        done.append(start)

    with pytest.raises(RuntimeError, match="piece 1 failed"):
        threads.run(piece, [(0, 1), (1, 2), (2, 3)])
    assert sorted(done) == [0, 2]  # the others ran to the end
    done.clear()
    threads.run(lambda start, stop: done.append(start), [(0, 1), (1, 2), (2, 3)])
    assert sorted(done) == [0, 1, 2]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_blas_pieces_agree_with_one_thread_within_float32_rounding(kind, rng, four_cpus):
    """Pieces of 32+ rows go through OpenBLAS, whose result for a row depends on how many
    rows it is given: equal within float32 rounding, not bit for bit."""
    from .helpers import tolerance

    m = getattr(fastrnn, kind)(96, 128, num_layers=2, bidirectional=True)
    B = 2 * engine.cpu.BLAS_MIN_PIECE + 3
    x = rng.standard_normal((6, B, 96)).astype(np.float32)
    gy = rng.standard_normal((6, B, 256)).astype(np.float32)
    runs = []
    for n in (1, 2):
        fastrnn.set_num_threads(n)
        y, state, tape = m.forward_train(x)
        grads = m.backward(tape, gy)
        runs.append([y, grads.input, *grads.params.values()])
    for i, (a, b) in enumerate(zip(*runs)):
        scale = float(np.abs(a).max())
        assert np.abs(a - b).max() <= tolerance("float32", scale, gradient=i > 0), i
