#!/usr/bin/env python3
"""Compares two result files of bench/run.py, metric by metric: how noisy is this machine?

    python3 bench/compare.py bench/results/latest.jsonl bench/results/noise-2.jsonl [--system ray]

For each metric it prints both medians and the change, oriented like the main table
(> 1 means the second run was better), plus the largest min–max spread inside either run.
"""

import argparse
import json
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


def rows(first, second, system):
    """(metric, unit, run A median, run B median, B vs A, widest in-run spread) rows."""
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
                    f"{change:.2f}×", f"{max(spread(ea), spread(eb)):.2f}×"))
    return out


def main(argv=None):
    """Prints the comparison as a text table, or Markdown with --markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--system", default="ray")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    header = ("metric", "unit", "run A", "run B", "B vs A (>1: B better)", "max/min in a run")
    table = rows(load(args.first), load(args.second), args.system)
    print(md_table(header, table) if args.markdown else text_table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
