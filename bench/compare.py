#!/usr/bin/env python3
"""Compares two result files of bench/run.py, metric by metric: how noisy is this machine?

    python3 bench/compare.py bench/results/latest.jsonl bench/results/noise-2.jsonl [--system ray]

For each metric it prints both medians and the change, oriented like the main table
(> 1 means the second run was better), the largest min–max spread inside either run, and
the two-sided p-value of a Mann-Whitney U test over the two runs' samples (how likely a
difference at least this large is when both runs measure the same thing; with a few
samples per side, only p < 0.05 says "changed").
"""

import argparse
import json
import math
import sys

from run import fmt, md_table, merge, metric_order, text_table


def load(path):
    """The raw lines of a results .jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def spread(entry):
    """max / min of one merged metric (1.0 when it has no spread or no figures)."""
    if not entry or "median" not in entry or entry["min"] <= 0:
        return 1.0
    return entry["max"] / entry["min"]


def mann_whitney_p(xs, ys):
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, ties averaged)."""
    pooled = sorted([(v, 0) for v in xs] + [(v, 1) for v in ys])
    ranks = [0.0] * len(pooled)
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    n1, n2 = len(xs), len(ys)
    u1 = sum(r for r, (_, side) in zip(ranks, pooled) if side == 0) - n1 * (n1 + 1) / 2
    sd = math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    if sd == 0:
        return 1.0
    return math.erfc(abs(u1 - n1 * n2 / 2) / sd / math.sqrt(2))


def rows(first, second, system):
    """(metric, unit, run A median, run B median, B vs A, widest in-run spread, p) rows."""
    a, b = merge(first), merge(second)
    out = []
    for name in metric_order(first):
        ea, eb = a.get((system, name)), b.get((system, name))
        if not ea or not eb or "median" not in ea or "median" not in eb:
            continue
        unit = ea.get("unit", "")
        if ea["median"] > 0 and eb["median"] > 0:
            change = (ea["median"] / eb["median"] if ea.get("better") == "lower"
                      else eb["median"] / ea["median"])
        else:
            change = 1.0
        out.append((name, unit, fmt(ea["median"], unit), fmt(eb["median"], unit),
                    f"{change:.2f}×", f"{max(spread(ea), spread(eb)):.2f}×",
                    f"{mann_whitney_p(ea['samples'], eb['samples']):.2f}"))
    return out


def main(argv=None):
    """Prints the comparison as a text table, or Markdown with --markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--system", default="ray")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    header = ("metric", "unit", "run A", "run B", "B vs A (>1: B better)", "max/min in a run",
              "p (U test)")
    table = rows(load(args.first), load(args.second), args.system)
    print(md_table(header, table) if args.markdown else text_table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
