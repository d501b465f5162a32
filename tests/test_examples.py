"""The examples run and do what they say."""

import pathlib
import runpy
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def test_char_rnn_trains_without_torch():
    code = (f"import sys; "
            f"import runpy; g = runpy.run_path({str(EXAMPLES / 'numpy_char_rnn.py')!r}); "
            "first, last = g['main'](['--steps', '120', '--hidden', '64']); "
            "assert last < first - 0.8, (first, last); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_truncated_bptt_example(capsys):
    runpy.run_path(str(EXAMPLES / "truncated_bptt.py"), run_name="__main__")
    out = capsys.readouterr().out
    err = float(out.split("max |diff| = ")[1].split()[0])
    assert err < 1e-10
