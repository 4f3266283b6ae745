#!/usr/bin/env python3
"""Plot a bench/proxy.sh run: throughput, p99 latency and proxy CPU per request, per case and per
protocol, as bars at the median over the rounds with whiskers from the lowest to the highest round.

Usage: bench/plot.py [RESULTS.csv [OUT.png]]
  defaults: bench/results/proxy.csv and, beside it, the same name with .png. The first lines of
  RESULTS.txt (proxy.sh's report beside the CSV), if present, go under the title: machine, tools,
  ward's version and the date of the run.

Needs matplotlib: this script uses the running Python's, else Debian's (/usr/bin/python3 with
python3-matplotlib), else makes a venv in $TMPDIR/ward-bench-plot-venv and installs matplotlib
from PyPI into it; then it runs itself again with that Python.
"""

import csv
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401

        return
    except ImportError:
        pass
    if os.environ.get("WARD_PLOT_REEXEC"):
        sys.exit("matplotlib is still missing after switching Python")
    env = dict(os.environ, WARD_PLOT_REEXEC="1")
    debian = "/usr/bin/python3"
    if os.path.realpath(sys.executable) != os.path.realpath(debian) and os.path.exists(debian):
        if subprocess.run([debian, "-c", "import matplotlib"], capture_output=True).returncode == 0:
            os.execve(debian, [debian, __file__, *sys.argv[1:]], env)
    venv = os.path.join(tempfile.gettempdir(), "ward-bench-plot-venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "--quiet", "matplotlib"], check=True)
    os.execve(py, [py, __file__, *sys.argv[1:]], env)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results", "proxy.csv")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.splitext(src)[0] + ".png"
    ensure_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = defaultdict(list)  # (case, proto) -> rows
    cases, protos = [], []
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["case"], row["proto"])
            runs[key].append(row)
            if row["case"] not in cases:
                cases.append(row["case"])
            if row["proto"] not in protos:
                protos.append(row["proto"])
    rounds = max(len(v) for v in runs.values())

    subtitle = ""
    txt = os.path.splitext(src)[0] + ".txt"
    if os.path.exists(txt):
        with open(txt) as f:
            head = [line.strip() for line in f.readlines()[:5]]
        keep = [h for h in head if h.startswith(("machine:", "ward:", "date:"))]
        subtitle = "\n".join(keep)

    # Throughput and p99 span two orders of magnitude (the upstream alone against a proxy
    # verifying every signature): log scales, with the medians written on the bars.
    panels = [
        ("rps", "throughput (requests/s, log)", True, lambda m: f"{m / 1000:.1f}k"),
        ("p99_ms", "p99 latency (ms, log)", True, lambda m: f"{m:.1f}"),
        ("cpu_us_per_req", "proxy CPU per request (µs, user+system)", False, lambda m: f"{m:.0f}"),
    ]
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(12, 1.1 * len(cases) + 3), 13), sharex=True)
    width = 0.8 / len(protos)
    for ax, (col, label, log, fmt) in zip(axes, panels):
        for i, proto in enumerate(protos):
            med, lo, hi, xs = [], [], [], []
            for j, case in enumerate(cases):
                vals = [float(r[col]) for r in runs.get((case, proto), []) if r[col] != ""]
                if not vals:
                    continue
                m = statistics.median(vals)
                xs.append(j - 0.4 + width * (i + 0.5))
                med.append(m)
                lo.append(m - min(vals))
                hi.append(max(vals) - m)
            ax.bar(xs, med, width * 0.95, label=proto, color=colors[i % len(colors)],
                   yerr=[lo, hi], capsize=2, error_kw={"elinewidth": 0.8})
            for x, m, h in zip(xs, med, hi):
                ax.text(x, (m + h) * (1.08 if log else 1.0) + (0 if log else 2), fmt(m),
                        ha="center", va="bottom", fontsize=6.5, rotation=90)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(top=ax.get_ylim()[1] * 4)
        else:
            ax.set_ylim(top=ax.get_ylim()[1] * 1.15)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(title="load", ncol=len(protos), loc="upper right")
    axes[-1].set_xticks(range(len(cases)))
    axes[-1].set_xticklabels(cases, rotation=30, ha="right")
    fig.suptitle(
        f"bench/proxy.sh: median of {rounds} interleaved rounds (whiskers: lowest to highest round); "
        "64 keep-alive connections over TLS, proxy and upstream on one core",
        fontsize=11,
    )
    if subtitle:
        fig.text(0.01, 0.005, subtitle, fontsize=7, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
