"""Weight files are untrusted input; saving never loses the previous file.

Risky cases (crafted sizes, write failures) run in a subprocess with resource limits,
so a regression fails the test instead of taking the machine down.
"""

import json
import struct
import subprocess
import sys
import textwrap
import threading
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn.io import FileFormatError, load_safetensors, save_safetensors

CONFIG = "__fastrnn_config__"


def _small_file(tmp_path, name="m.safetensors"):
    path = tmp_path / name
    fastrnn.save(fastrnn.GRU(2, 3, seed=0), path)
    return path


def _run_limited(code, address_space=3 * 2**30, timeout=120):
    """Run ``code`` in a fresh interpreter under an address-space limit; (rc, stdout, stderr)."""
    prologue = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({address_space}, {address_space}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.returncode, out.stdout, out.stderr


def test_crafted_config_is_refused_before_allocating(tmp_path):
    """212 bytes that claim num_layers = 10,000,000: refused fast, in little memory."""
    path = tmp_path / "crafted.safetensors"
    cfg = {
        "class": "LSTM",
        "config": {"input_size": 64, "hidden_size": 64, "num_layers": 10_000_000},
        "format_version": 2,
        "weights": "float32",
    }
    save_safetensors(
        path, {"weight_ih_l0": np.zeros((1, 1), np.float32)}, {CONFIG: json.dumps(cfg)}
    )
    rc, out, err = _run_limited(f"""
        import time, fastrnn
        t = time.perf_counter()
        try:
            fastrnn.load({str(path)!r})
        except fastrnn.io.FileFormatError as exc:
            print(time.perf_counter() - t, exc)
    """)
    assert rc == 0, err
    seconds, message = out.split(" ", 1)
    assert float(seconds) < 1.0
    assert str(path) in message and "GiB" in message


def test_constructor_refuses_sizes_that_cannot_fit():
    with pytest.raises(ValueError, match=r"num_layers|parameters: .* GiB"):
        fastrnn.LSTM(64, 64, num_layers=10**9)
    with pytest.raises(ValueError, match="GiB"):
        fastrnn.GRUCell(10**6, 10**5)


def test_npz_bomb_is_refused_before_inflating(tmp_path):
    """A member that inflates to 400 MB (compressed to a few hundred KB) whose shape the
    configuration does not allow: refused from the .npy header, under a 1.5 GB limit."""
    path = tmp_path / "bomb.npz"
    model = fastrnn.GRU(2, 3)
    arrays = dict(model.state_dict())
    arrays[CONFIG] = np.array(
        json.dumps(
            {"class": "GRU", "config": model.config(), "format_version": 2, "weights": "float32"}
        )
    )
    np.savez(path, **arrays)
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**4, 10**4)}
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("weight_hh_l0_big.npy", "w", force_zip64=True) as w:
            np.lib.format.write_array_header_1_0(w, header)
            chunk = bytes(2**22)
            for _ in range(100):
                w.write(chunk)
    assert path.stat().st_size < 5 * 2**20
    rc, out, err = _run_limited(
        f"""
        import fastrnn
        try:
            fastrnn.load({str(path)!r})
        except fastrnn.io.FileFormatError as exc:
            print(exc)
    """,
        address_space=int(1.5 * 2**30),
    )
    assert rc == 0, err
    assert "weight_hh_l0_big" in out and str(path) in out


@pytest.mark.parametrize(
    "case",
    [
        "negative_offset",
        "overlap",
        "gap",
        "beyond_end",
        "duplicate_key",
        "not_utf8",
        "header_too_long",
        "unknown_dtype",
        "not_object",
        "bad_shape",
        "deep_json",
        "metadata_not_strings",
    ],
)
def test_malformed_safetensors_raise_one_error_naming_the_file(case, tmp_path):
    a, b = np.zeros(2, np.float32), np.ones(3, np.float32)
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]},
    }
    body = a.tobytes() + b.tobytes()
    raw = None
    if case == "negative_offset":
        header["a"]["data_offsets"] = [-4, 4]
    elif case == "overlap":
        header["b"]["data_offsets"] = [4, 16]
        header["b"]["shape"] = [3]
    elif case == "gap":
        body += bytes(4)
    elif case == "beyond_end":
        header["b"]["data_offsets"] = [8, 40]
        header["b"]["shape"] = [8]
    elif case == "duplicate_key":
        raw = (
            b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
            b'"a":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}}'
        )
    elif case == "not_utf8":
        raw = b'{"\xff":1}'
    elif case == "unknown_dtype":
        header["a"]["dtype"] = "Q7"
    elif case == "not_object":
        raw = b"[1, 2]"
    elif case == "bad_shape":
        header["a"]["shape"] = [-2]
    elif case == "deep_json":
        raw = b"[" * 100000 + b"]" * 100000
    elif case == "metadata_not_strings":
        header["__metadata__"] = {"x": 1}
    raw = json.dumps(header).encode() if raw is None else raw
    length = len(raw) + (10**6 if case == "header_too_long" else 0)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", length) + raw + body)
    with pytest.raises(FileFormatError) as info:
        load_safetensors(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileFormatError):
        fastrnn.load(path)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_files_load_or_raise_file_format_error(tmp_path, data):
    """Random byte flips, insertions and truncations of a valid file: either a model
    equal in configuration comes back, or FileFormatError; never anything else."""
    suffix = data.draw(st.sampled_from([".safetensors", ".npz"]))
    path = _small_file(tmp_path, "orig" + suffix)
    blob = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        at = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del blob[at:]
        else:
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    mutated = tmp_path / ("mutated" + suffix)
    mutated.write_bytes(bytes(blob))
    try:
        model = fastrnn.load(mutated)
    except FileFormatError:
        return
    assert isinstance(model, fastrnn.GRU)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_truncation_at_every_byte_raises_file_format_error(suffix, tmp_path):
    blob = _small_file(tmp_path, "orig" + suffix).read_bytes()
    path = tmp_path / ("cut" + suffix)
    for cut in range(len(blob)):
        path.write_bytes(blob[:cut])
        with pytest.raises(FileFormatError):
            fastrnn.load(path)


def test_values_beyond_the_dtype_are_refused_naming_the_tensor(tmp_path):
    m = fastrnn.GRU(2, 3)
    sd = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    sd["weight_hh_l0"][0, 0] = 1e39  # finite in float64, inf in float32
    cfg = {"class": "GRU", "config": m.config(), "format_version": 2, "weights": "float32"}
    path = tmp_path / "big.safetensors"
    save_safetensors(path, sd, {CONFIG: json.dumps(cfg)})
    with pytest.raises(FileFormatError, match=r"weight_hh_l0.*float32's range"):
        fastrnn.load(path)
    with pytest.raises(ValueError, match=r"weight_hh_l0.*float32's range"):
        m.load_state_dict(sd)


def test_save_refuses_what_load_would_refuse(tmp_path):
    with pytest.raises(TypeError, match="model must be a fastrnn"):
        fastrnn.save({"weight": np.zeros(3)}, tmp_path / "x.safetensors")
    m = fastrnn.LSTM(2, 3)
    m.state_dict()["weight_hh_l0"][0, 0] = np.nan
    with pytest.raises(ValueError, match="weight_hh_l0.*non-finite"):
        fastrnn.save(m, tmp_path / "nan.npz")
    assert not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match="complex"):
        save_safetensors(tmp_path / "c.safetensors", {"z": np.zeros(2, np.complex64)})
    np.savez(tmp_path / "c.npz", z=np.zeros(2, np.complex64))
    with pytest.raises(FileFormatError, match="complex"):
        fastrnn.load(tmp_path / "c.npz")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_failed_save_keeps_the_old_file(suffix, tmp_path):
    """The file-size limit stops the write halfway: the old file is intact, no debris."""
    path = tmp_path / ("model" + suffix)
    fastrnn.save(fastrnn.GRU(2, 3, seed=1), path)
    before = path.read_bytes()
    rc, out, err = _run_limited(f"""
        import os, resource, signal
        import fastrnn
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        big = fastrnn.GRU(64, 256)
        limit = {len(before)} + 4096
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            fastrnn.save(big, {str(path)!r})
        except OSError as exc:
            print("failed", exc.errno)
    """)
    assert rc == 0, err
    assert out.startswith("failed")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert fastrnn.load(path).hidden_size == 3


def test_concurrent_save_and_load_never_read_a_torn_file(tmp_path):
    path = tmp_path / "hot.safetensors"
    models = [fastrnn.GRU(4, 8, seed=s) for s in (1, 2)]
    fastrnn.save(models[0], path)
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            fastrnn.save(models[i % 2], path)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            got = fastrnn.load(path).state_dict()["weight_hh_l0"]
            assert any(np.array_equal(got, m.state_dict()["weight_hh_l0"]) for m in models)
    finally:
        stop.set()
        thread.join()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert leftovers == []


@pytest.mark.parametrize("field, value", [("flags", 0x1), ("method", 99), ("method", 12)])
def test_npz_member_encrypted_or_compressed_otherwise_raises_file_format_error(
    tmp_path, field, value
):
    """An .npz member marked encrypted, or compressed by a method NumPy never writes,
    is a FileFormatError naming the file (zipfile would raise RuntimeError, or
    NotImplementedError, or decompress bzip2 it was never meant to read). Found by the
    fuzz test above."""
    blob = bytearray(_small_file(tmp_path, "orig.npz").read_bytes())
    at = blob.find(b"PK\x01\x02")  # the first central-directory entry
    assert at >= 0
    offset = at + (8 if field == "flags" else 10)
    old = int.from_bytes(blob[offset : offset + 2], "little")
    new = old | value if field == "flags" else value
    blob[offset : offset + 2] = new.to_bytes(2, "little")
    path = tmp_path / "patched.npz"
    path.write_bytes(bytes(blob))
    with pytest.raises(FileFormatError) as info:
        fastrnn.load(path)
    assert str(path) in str(info.value)


def test_every_bit_flip_in_the_npz_directory_loads_or_raises_file_format_error(tmp_path):
    """Every single-bit flip of an .npz file's central directory (compression method,
    flags, versions, sizes, names, offsets): a model comes back or FileFormatError,
    never zipfile's NotImplementedError or RuntimeError (the fuzz test found three)."""
    blob = _small_file(tmp_path, "orig.npz").read_bytes()
    start = blob.find(b"PK\x01\x02")
    assert start >= 0
    path = tmp_path / "flipped.npz"
    for at in range(start, len(blob)):
        for bit in range(8):
            flipped = bytearray(blob)
            flipped[at] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            try:
                assert isinstance(fastrnn.load(path), fastrnn.GRU)
            except FileFormatError:
                pass
