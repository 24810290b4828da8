#!/usr/bin/env python3
"""PNG plots of a bench/run result file (bench/results/run-<date>.json).

    .venv/bin/python bench/plots.py bench/results/run-20261203-120000.json [--out docs/perf]

bench/run calls ``plot_all`` at the end of a run; this command redraws the
plots from a saved file. Needs matplotlib (the ``bench`` extra:
``.venv/bin/python -m pip install -e '.[bench]'``). Each plot is drawn only
when the file has its measurements.
"""

import argparse
import json
import sys
from pathlib import Path

INSTALL_HINT = (
    "matplotlib is not installed; install the bench extra from the top of the checkout:\n"
    "    .venv/bin/python -m pip install -e '.[bench]'"
)
OURS, REF = "#1f77b4", "#ff7f0e"
LABELS = {"ours": "ours (Python)", "ref": "condure 1.9.1 (Debian, Rust)"}


def require_matplotlib():
    """Import matplotlib with the Agg backend, or exit with how to install it."""
    try:
        import matplotlib
    except ImportError:
        sys.exit(INSTALL_HINT)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def case_label(mode, connections):
    return "{} mode\n{} connection{}".format(mode, connections, "" if connections == 1 else "s")


def grouped_bars(ax, labels, ours, ref, fmt="{:.0f}", ratio=True, goal=None):
    """Two bars per group (ours, ref), values written above; ours/ref under
    the group name when ``ratio``; with ``goal``, a dashed mark over ours'
    bar at goal x condure's value (issue 12's target)."""
    xs = range(len(labels))
    w = 0.38
    for values, dx, color, impl in ((ours, -w / 2, OURS, "ours"), (ref, w / 2, REF, "ref")):
        heights = [v or 0 for v in values]
        bars = ax.bar([x + dx for x in xs], heights, w, color=color, label=LABELS[impl])
        for bar, v in zip(bars, values, strict=False):
            if v is not None:
                ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")
    if goal is not None:
        label = f"goal: {goal:g} x condure"
        for i, r in enumerate(ref):
            if r:
                ax.plot([i - w, i], [goal * r] * 2, color="black", linestyle="--", linewidth=1,
                        label=label)
                label = None
    if ratio:
        labels = [
            f"{lab}\nours/condure {o / r:.2f}" if o and r else lab
            for lab, o, r in zip(labels, ours, ref, strict=False)
        ]
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)


def wrk_cases(result):
    rows = result.get("wrk", {}).get("summary", [])
    cases = []
    for mode in ("stream", "req"):
        for c in sorted({r["connections"] for r in rows if r["mode"] == mode}, reverse=True):
            get = {r["impl"]: r for r in rows if r["mode"] == mode and r["connections"] == c}
            cases.append((case_label(mode, c), get.get("ours", {}), get.get("ref", {})))
    return cases


def when(result):
    d = result.get("date", "")  # YYYYmmdd-HHMMSS
    return f"{d[:4]}-{d[4:6]}-{d[6:8]} {d[9:11]}:{d[11:13]}" if len(d) == 15 else d


def subtitle(result):
    rounds = result.get("options", {}).get("rounds")
    quick = ", --quick" if result.get("options", {}).get("quick") else ""
    return "{}, medians of {} alternating round{}{}".format(
        when(result), rounds, "" if rounds == 1 else "s", quick)


def plot_wrk(plt, result, out):
    cases = wrk_cases(result)
    if not cases:
        return []
    labels = [c[0] for c in cases]
    files = []

    fig, ax = plt.subplots(figsize=(9, 4.8))
    grouped_bars(ax, labels, [o.get("rps") for _, o, _ in cases],
                 [r.get("rps") for _, _, r in cases], goal=0.8)
    ax.set_ylabel("requests per second (wrk, keep-alive)")
    ax.set_title("HTTP requests per second\n" + subtitle(result), fontsize=10)
    ax.legend(fontsize=8)
    files.append(save(fig, out / "wrk_rps.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, name in ((axes[0], "p50_ms", "p50"), (axes[1], "p99_ms", "p99")):
        grouped_bars(ax, labels, [o.get(key) for _, o, _ in cases],
                     [r.get(key) for _, _, r in cases], fmt="{:.2f}",
                     goal=1.25 if key == "p50_ms" else None)
        ax.set_ylabel(name + " latency (ms)")
        ax.set_title(name + " latency", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].set_yscale("log")
    fig.suptitle("HTTP latency, " + subtitle(result), fontsize=10)
    files.append(save(fig, out / "wrk_latency.png"))

    fig, ax = plt.subplots(figsize=(9, 4.8))
    grouped_bars(ax, labels, [o.get("cpu_us") for _, o, _ in cases],
                 [r.get("cpu_us") for _, _, r in cases])
    ax.set_ylabel("condure CPU per request (µs, whole process tree)")
    ax.set_title("CPU per request\n" + subtitle(result), fontsize=10)
    ax.legend(fontsize=8)
    files.append(save(fig, out / "wrk_cpu.png"))
    return files


def plot_ws(plt, result, out):
    summary = {r["impl"]: r for r in result.get("ws_echo", {}).get("summary", [])}
    if not summary:
        return []
    o, r = summary.get("ours", {}), summary.get("ref", {})
    opts = result.get("ws_echo", {}).get("settings", {})
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    grouped_bars(axes[0], ["CPU per echo (µs)"], [o.get("cpu_us")], [r.get("cpu_us")],
                 goal=1.2)
    grouped_bars(axes[1], ["longest wait for an echo (s)"], [o.get("max_stall")],
                 [r.get("max_stall")], fmt="{:.3f}")
    axes[1].axhline(0.2, color="black", linestyle="--", linewidth=1, label="goal: 0.2 s")
    axes[1].legend(fontsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle("WebSocket echo, {} clients x {:g}/s, {}".format(
        opts.get("clients"), 1 / opts["interval"] if opts.get("interval") else 0,
        subtitle(result)), fontsize=10)
    return [save(fig, out / "ws_echo.png")]


def plot_memory(plt, result, out):
    runs = result.get("memory", {}).get("runs", [])
    if not runs:
        return []
    kinds = [k for k in ("http", "ws") if any(r["kind"] == k for r in runs)]

    def value(impl, kind):
        found = [r for r in runs if r["impl"] == impl and r["kind"] == kind]
        v = found[-1]["pss_per_conn"] if found else None
        return v / 1024 if v is not None else None

    names = {"http": "idle HTTP keep-alive", "ws": "idle WebSocket"}
    count = max(r["held"] for r in runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    grouped_bars(ax, [names[k] for k in kinds], [value("ours", k) for k in kinds],
                 [value("ref", k) for k in kinds], fmt="{:.1f}", goal=0.25)
    ax.set_ylabel("KiB (PSS) per connection")
    ax.set_title(f"Memory per idle connection, {count:,} connections\n(PSS of condure's process "
                 f"tree with N minus with 0) / N, {when(result)}",
                 fontsize=10)
    ax.legend(fontsize=8)
    return [save(fig, out / "memory.png")]


def plot_scale(plt, result, out):
    scale = result.get("scale")
    if not scale or not scale.get("timeline"):
        return []
    fig, ax = plt.subplots(figsize=(9, 4.8))
    tl = scale["timeline"]
    ax.plot([p["t"] for p in tl], [p["held"] for p in tl], color=OURS, marker=".",
            label="WebSockets held")
    ax.set_xlabel("seconds")
    ax.set_ylabel("WebSockets held")
    ax.grid(alpha=0.3)
    mem = scale.get("memory") or tl
    ax2 = ax.twinx()
    ax2.plot([p["t"] for p in mem], [p["pss"] / 2**20 for p in mem], color=REF,
             label="PSS (MB)")
    ax2.plot([p["t"] for p in mem], [p["rss"] / 2**20 for p in mem], color=REF,
             linestyle="--", label="RSS (MB)")
    ax2.set_ylabel("memory of ours, whole process tree (MB)")
    ax2.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
    echo = scale.get("echo", {})
    slope = scale.get("pss_slope_per_conn")
    ax.set_title("Scale run (ours, {} workers): {:,} held, echo check {:,}/{:,}{}\n{}".format(
        scale["workers"], scale.get("held_at_end", 0), echo.get("answered", 0),
        echo.get("asked", 0),
        f", {slope / 1024:.2f} KiB per connection" if slope else "",
        when(result)), fontsize=10)
    return [save(fig, out / "scale.png")]


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def plot_all(result, out):
    """Draw every plot the result has data for into ``out``; the file names."""
    plt = require_matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for plot in (plot_wrk, plot_ws, plot_memory, plot_scale):
        files += plot(plt, result, out)
    return files


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("result", help="a bench/results/run-*.json file")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "perf"))
    args = p.parse_args()
    for f in plot_all(json.loads(Path(args.result).read_text()), args.out):
        print(f)


if __name__ == "__main__":
    main()
