"""A static report of the asv results: Markdown and HTML tables plus PNG charts.

asv's own dashboard loads its scripts at view time; this report needs nothing but
the files it writes, so it opens offline (``index.html`` in any browser, or
``index.md``). Built from asv's result files (``asv_bench/.asv/results``):

* for every benchmark with an ``engine`` parameter, the newest commit's times per
  engine and the ratios other engine / fastrnn (above 1: fastrnn is faster), as a
  table and as one chart per comparison;
* for every ``track_*`` benchmark, the newest values, and a chart of each series over
  the commits when there are several.

    python tools/asv_report.py [--results asv_bench/.asv/results] [--out asv_bench/.asv/report]
"""

import argparse
import ast
import glob
import html
import itertools
import json
import math
import os
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fastrnn.charts import ratio_chart  # noqa: E402


def load_runs(results_dir):
    """``[(machine, run dict)]`` for every result file, oldest first."""
    runs = []
    for machine_dir in sorted(glob.glob(os.path.join(results_dir, "*"))):
        if not os.path.isdir(machine_dir):
            continue
        for path in glob.glob(os.path.join(machine_dir, "*.json")):
            if os.path.basename(path) == "machine.json":
                continue
            with open(path) as f:
                run = json.load(f)
            if "results" in run and "result_columns" in run:
                runs.append((os.path.basename(machine_dir), run))
    runs.sort(key=lambda mr: mr[1].get("date", 0))
    return runs


def expand(run, name):
    """``(param names, [(param values tuple, value)])`` of benchmark ``name`` in ``run``."""
    columns = run["result_columns"]
    entry = dict(zip(columns, run["results"][name]))
    params = [[ast.literal_eval(v) for v in values] for values in entry.get("params") or []]
    values = entry.get("result")
    if values is None:
        return [], []
    if not params:
        return [], [((), values[0] if isinstance(values, list) else values)]
    combos = list(itertools.product(*params))
    return params, list(zip(combos, values))


def _param_names(benchmarks, name, count):
    info = benchmarks.get(name, {})
    names = info.get("param_names") or [f"p{i}" for i in range(count)]
    return names[:count]


def _fmt_time(seconds):
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def engine_tables(run, benchmarks):
    """``[(benchmark, header, rows, {versus: (labels, ratios)})]`` for engine benchmarks."""
    tables = []
    for name in sorted(run["results"]):
        params, values = expand(run, name)
        names = _param_names(benchmarks, name, len(params))
        if "engine" not in names or not name.split(".")[-1].startswith("time_"):
            continue
        e = names.index("engine")
        engines = params[e]
        groups = {}
        for combo, value in values:
            key = combo[:e] + combo[e + 1 :]
            groups.setdefault(key, {})[combo[e]] = value
        others = [x for x in engines if x != "fastrnn"]
        header = [n for n in names if n != "engine"] + list(engines) + [f"vs {x}" for x in others]
        rows, charts = [], {x: ([], []) for x in others}
        for key, times in groups.items():
            ours = times.get("fastrnn")
            ratios = [times.get(x) / ours if ours and times.get(x) else None for x in others]
            rows.append(
                [str(k) for k in key]
                + [_fmt_time(times.get(x)) for x in engines]
                + ["-" if r is None else f"{r:.2f}x" for r in ratios]
            )
            label = " ".join(f"{n}={k}" for n, k in zip(header, key))
            for x, r in zip(others, ratios):
                charts[x][0].append(label)
                charts[x][1].append(r)
        tables.append((name, header, rows, charts))
    return tables


def track_series(runs, benchmarks):
    """``{benchmark: {param label: [(commit, date, value)]}}`` for ``track_*`` benchmarks."""
    series = {}
    for _, run in runs:
        for name in run["results"]:
            if not name.split(".")[-1].startswith("track_"):
                continue
            params, values = expand(run, name)
            names = _param_names(benchmarks, name, len(params))
            for combo, value in values:
                label = " ".join(f"{n}={v}" for n, v in zip(names, combo)) or "value"
                series.setdefault(name, {}).setdefault(label, []).append(
                    (run["commit_hash"][:8], run.get("date", 0), value)
                )
    return series


def history_chart(name, lines, unit, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for label, points in lines.items():
        xs = list(range(len(points)))
        ax.plot(
            xs,
            [p[2] if p[2] is not None else float("nan") for p in points],
            marker="o",
            label=label,
        )
        ax.set_xticks(xs, [p[0] for p in points], rotation=45, fontsize=7)
    if unit and "faster" in unit:
        ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel(unit or "")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--results", default="asv_bench/.asv/results", help="asv's results folder")
    ap.add_argument("--out", default="asv_bench/.asv/report", help="folder for the report")
    args = ap.parse_args(argv)
    runs = load_runs(args.results)
    if not runs:
        print(f"no asv results under {args.results}: run 'make asv' first", file=sys.stderr)
        return 1
    bench_file = os.path.join(args.results, "benchmarks.json")
    benchmarks = json.load(open(bench_file)) if os.path.exists(bench_file) else {}
    os.makedirs(args.out, exist_ok=True)
    machine, newest = runs[-1]
    when = datetime.fromtimestamp(newest.get("date", 0) / 1000, timezone.utc)
    info = newest.get("params", {})
    title = (
        f"{info.get('cpu', '?')}, {info.get('num_cpu', '?')} CPUs; commit "
        f"{newest['commit_hash'][:8]} ({when:%Y-%m-%d})"
    )
    md = [
        f"# fastrnn benchmarks\n\nMachine `{machine}`: {title}. Ratios are the other "
        "engine's time / fastrnn's time: above 1, fastrnn is faster.\n"
    ]
    parts = [
        f"<h1>fastrnn benchmarks</h1><p>Machine <code>{html.escape(machine)}</code>: "
        f"{html.escape(title)}. Ratios are the other engine's time / fastrnn's time: "
        "above 1, fastrnn is faster.</p>"
    ]
    for name, header, rows, charts in engine_tables(newest, benchmarks):
        md.append(f"\n## {name}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        md.extend("| " + " | ".join(r) + " |\n" for r in rows)
        parts.append(
            f"<h2>{html.escape(name)}</h2><table border=1 cellpadding=3><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
            )
            + "</table>"
        )
        for versus, (labels, ratios) in charts.items():
            png = f"{name.replace('.', '_')}_vs_{versus}.png"
            if ratio_chart(labels, ratios, os.path.join(args.out, png), f"{name}: {title}", versus):
                md.append(f"\n![{name} vs {versus}]({png})\n")
                parts.append(f'<p><img src="{png}" alt="{html.escape(name)} vs {versus}"></p>')
    series = track_series(runs, benchmarks)
    if series:
        md.append(
            "\n## Tracked figures (newest commit)\n\n| benchmark | series | value |\n"
            "|---|---|---|\n"
        )
        parts.append(
            "<h2>Tracked figures (newest commit)</h2><table border=1 cellpadding=3>"
            "<tr><th>benchmark</th><th>series</th><th>value</th></tr>"
        )
        for name, lines in sorted(series.items()):
            unit = benchmarks.get(name, {}).get("unit", "")
            for label, points in lines.items():
                value = points[-1][2]
                text = "-" if value is None else f"{value:.3g} {unit}".strip()
                md.append(f"| {name} | {label} | {text} |\n")
                parts.append(
                    f"<tr><td>{html.escape(name)}</td><td>{html.escape(label)}</td>"
                    f"<td>{html.escape(text)}</td></tr>"
                )
        parts.append("</table>")
        for name, lines in sorted(series.items()):
            if max(len(p) for p in lines.values()) < 2:
                continue
            png = f"history_{name.replace('.', '_')}.png"
            unit = benchmarks.get(name, {}).get("unit", "")
            if history_chart(name, lines, unit, os.path.join(args.out, png)):
                md.append(f"\n![{name} over commits]({png})\n")
                parts.append(f'<p><img src="{png}" alt="{html.escape(name)}"></p>')
    with open(os.path.join(args.out, "index.md"), "w") as f:
        f.write("".join(md))
    with open(os.path.join(args.out, "index.html"), "w") as f:
        f.write(
            "<!doctype html><meta charset=utf-8><title>fastrnn benchmarks</title>" + "".join(parts)
        )
    print(f"wrote {os.path.join(args.out, 'index.html')} and index.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
