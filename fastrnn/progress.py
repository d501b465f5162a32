"""Progress reporting for the command line and the examples.

In a terminal a tqdm bar; when the output is a file or a CI log, plain lines at most
every few seconds (and the last one), which stay readable where ``\\r`` does not.
"""

import sys
import time

__all__ = ["progress"]


def progress(iterable, total=None, desc="", stream=None, every=5.0):
    """Iterate over ``iterable`` while reporting progress on ``stream`` (stderr).

    Parameters
    ----------
    iterable : iterable
    total : int, optional
        Number of items, if ``iterable`` has no ``len``.
    desc : str
        What is being done, shown before the count.
    stream : file, optional
        Where to write; ``sys.stderr`` by default.
    every : float
        Seconds between plain lines when ``stream`` is not a terminal.
    """
    stream = sys.stderr if stream is None else stream
    total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
    if stream.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(iterable, total=total, desc=desc, file=stream, leave=False)
            return
    last = time.monotonic()
    count = 0
    for count, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= every or count == total:
            of = f"/{total}" if total else ""
            stream.write(f"{desc}: {count}{of}\n")
            stream.flush()
            last = now
