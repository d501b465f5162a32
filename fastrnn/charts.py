"""Speed-up charts for ``fastrnn bench`` and the asv report (matplotlib, imported lazily).

One chart per comparison ("fastrnn vs torch.nn", "fastrnn vs onnxruntime"): horizontal
bars on a log axis centred at 1x that start at 1x (right: fastrnn faster, left:
slower), each bar labelled with its value, and a title naming the machine, the cores
and the versions.
"""

import math

__all__ = ["ratio_chart"]


def ratio_chart(labels, ratios, path, title, versus):
    """Write a PNG bar chart of speed-ups; returns ``path``, or None without matplotlib.

    Parameters
    ----------
    labels : list of str
        One per bar (the workload).
    ratios : list of float or None
        ``versus``'s time / fastrnn's time; None or NaN bars are left out.
    path : str or os.PathLike
    title : str
        First title line (machine, cores, versions); the comparison is added below it.
    versus : str
        The other engine's name, e.g. ``"torch.nn"``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    except ImportError:
        return None
    rows = [(lab, r) for lab, r in zip(labels, ratios) if r is not None and math.isfinite(r)]
    if not rows:
        return None
    labels, values = zip(*rows)
    span = max(2.0, max(max(values), 1 / min(values)) * 1.35)
    fig, ax = plt.subplots(figsize=(9, 0.34 * len(values) + 1.6))
    ys = range(len(values))
    colors = ["#1b9e77" if v >= 1 else "#d95f02" for v in values]
    # bars start at 1x: width is the distance from 1 on the log axis
    ax.barh(ys, [v - 1 for v in values], left=1.0, height=0.6, color=colors)
    for y, v in zip(ys, values):
        ax.text(
            v * (1.03 if v >= 1 else 1 / 1.03),
            y,
            f"{v:.2f}x",
            va="center",
            ha="left" if v >= 1 else "right",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlim(1 / span, span)
    # powers of two: evenly spaced on the log axis, the same either side of 1x
    ticks = [2.0**k for k in range(-6, 7) if 1 / span <= 2.0**k <= span]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}x"))
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{versus}'s time / fastrnn's time  (right of 1x: fastrnn is faster)")
    ax.set_title(f"{title}\nfastrnn vs {versus}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
