#!/usr/bin/python3
"""Draws the benchmark plots of docs/benchmarks.md from the tables the benchmarks write.

    tools/plot_bench.py [BUILD] [OUTDIR]

reads BUILD/bench-batch.tsv (bench_batch: decode step time against batch size) and
BUILD/bench-load.tsv (bench_load: the serving benchmark) — whichever exist — and writes
into OUTDIR (default docs/):
  step-time.svg   step time against rows decoding together, base and 8 adapters, each
                  beside its roofline bound;
  throughput.svg  aggregate tokens/s against clients, one line per kind of traffic;
  latency.svg     TTFT and TPOT p50 / p99 of every serving case.
Needs Debian's python3-matplotlib. The figures are committed; rerun after new runs.
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams["svg.hashsalt"] = "lorad"   # stable SVG ids, so reruns diff cleanly
plt.rcParams["svg.fonttype"] = "none"


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def plot_step_time(rows, out):
    n = [int(r["rows"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(n, [float(r["base_ms"]) for r in rows], "o-", label="base, measured")
    ax.plot(n, [float(r["base_bound_ms"]) for r in rows], "--", color="C0", alpha=0.6,
            label="base, roofline bound")
    ax.plot(n, [float(r["adapters_ms"]) for r in rows], "s-", label="8 adapters, measured")
    ax.plot(n, [float(r["adapters_bound_ms"]) for r in rows], "--", color="C1", alpha=0.6,
            label="8 adapters, roofline bound")
    ax.set_xlabel("sequences decoding together (rows per step)")
    ax.set_ylabel("ms per decode step")
    ax.set_title("Decode step time against batch size (SmolLM2-135M shape, F32)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


# Lines of the throughput plot: (label, [case names in order of clients]).
LINES = [
    ("base", ["1 client, base", "8 clients, base", "32 clients, base", "64 clients, base"]),
    ("one adapter", ["1 client, adapter on the fly", "8 clients, one adapter",
                     "32 clients, one adapter"]),
    ("different adapters (8; Zipf over 100)", ["8 clients, 8 adapters",
                                               "32 clients, 100 adapters (Zipf)",
                                               "64 clients, 100 adapters (Zipf)"]),
    ("Zipf over 100, --merge auto", ["32 clients, 100 adapters, auto",
                                     "64 clients, 100 adapters, auto"]),
    ("Zipf over 1000 on disk", ["32 clients, 1000 adapters (Zipf)"]),
    ("8 mixes of 2", ["8 clients, 8 mixes of 2"]),
]


def plot_throughput(rows, out):
    by = {r["case"]: r for r in rows}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, names) in enumerate(LINES):
        pts = [(int(by[c]["clients"]), float(by[c]["tok_s"])) for c in names if c in by]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) > 1 else "o",
                    label=label, color="C%d" % i)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 8, 16, 32, 64])
    ax.set_xticklabels(["1", "8", "16", "32", "64"])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("generated tokens/s (all clients)")
    ax.set_title("lorad serve over loopback HTTP")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_latency(rows, out):
    names = [r["case"] for r in rows]
    y = range(len(rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.32 * len(rows) + 1.5), sharey=True)
    for ax, key, title in ((a1, "ttft", "time to first token (ms)"),
                           (a2, "tpot", "time per output token (ms)")):
        p50 = [float(r[key + "_p50_ms"]) for r in rows]
        p99 = [float(r[key + "_p99_ms"]) for r in rows]
        ax.barh([i + 0.2 for i in y], p50, height=0.4, label="p50")
        ax.barh([i - 0.2 for i in y], p99, height=0.4, label="p99")
        ax.set_title(title)
        ax.set_xscale("log")
        ax.grid(alpha=0.3, axis="x")
    a1.set_yticks(list(y))
    a1.set_yticklabels(names, fontsize=8)
    a1.invert_yaxis()
    a2.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    outdir = argv[2] if len(argv) > 2 else "docs"
    os.makedirs(outdir, exist_ok=True)
    done = 0
    path = os.path.join(build, "bench-batch.tsv")
    if os.path.exists(path):
        plot_step_time(read_tsv(path), os.path.join(outdir, "step-time.svg"))
        done += 1
    path = os.path.join(build, "bench-load.tsv")
    if os.path.exists(path):
        rows = read_tsv(path)
        plot_throughput(rows, os.path.join(outdir, "throughput.svg"))
        plot_latency(rows, os.path.join(outdir, "latency.svg"))
        done += 2
    if not done:
        print("plot_bench: no %s/bench-batch.tsv or bench-load.tsv (run make bench, "
              "make bench-load)" % build, file=sys.stderr)
        return 1
    print("plot_bench: wrote %d plot(s) to %s" % (done, outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
