#!/usr/bin/env python3
"""Runs bench/workload.py against rayd and against real Ray, alternating, and compares them.

Each round runs one workload process per system (the order flips every round, so drift on this
shared machine hits both); the samples of all rounds are merged into median / min / max. Every
run happens in a loopback-only network namespace (``unshare -n``) with
``RAY_USAGE_STATS_ENABLED=0``: real Ray sends nothing off this machine, and rayd gets the same
conditions. The plasma micro-benchmarks (``target/release/rayd-plasma-bench``) run too when built.

Writes ``bench/results/<label>.jsonl`` (every raw line) and ``bench/results/<label>.md`` (the
table, the machine and the versions), and prints the table. Standard library only.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
WORKLOAD = os.path.join(BENCH, "workload.py")
PLASMA_BENCH = os.path.join(REPO, "target", "release", "rayd-plasma-bench")
# Every process a run starts inherits this variable; leftovers are found by it afterwards.
RUN_MARKER = "RAYBENCH_RUN"
NETNS_PREFIX = ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "netns"]


class System:
    """One system under test: a label, its interpreter, and why it is unavailable (if it is)."""

    def __init__(self, name, python):
        self.name = name
        self.python = python
        self.unavailable = None
        self.info = {}


# ---------------------------------------------------------------------------------------------
# Running things in the loopback-only namespace.


def netns_problem():
    """None when ``unshare -n`` + ``ip`` give a loopback-only namespace here, else the reason."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            hint = " (apt-get install iproute2)" if tool == "ip" else ""
            return f"`{tool}` not found{hint}"
    probe = subprocess.run(NETNS_PREFIX + ["ip", "-o", "link"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -n failed: {probe.stderr.strip()[-300:]}"
    links = [line.split(":")[1].strip() for line in probe.stdout.splitlines() if ":" in line]
    if links != ["lo"]:
        return f"namespace has links other than lo: {links}"
    return None


def child_env(marker):
    """The environment of every benchmark process."""
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env[RUN_MARKER] = marker
    return env


def marked_pids(marker):
    """Pids of live processes whose environment carries this run's marker."""
    needle = f"{RUN_MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def reap_leftovers(marker, grace_s=5.0):
    """Waits up to ``grace_s`` for the run's processes to exit, then ends the rest by pid.
    Returns how many had to be ended."""
    deadline = time.monotonic() + grace_s
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = marked_pids(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in leftovers:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)
        leftovers = marked_pids(marker)
        if not leftovers:
            break
    return len(leftovers) if leftovers else 0


def run_isolated(argv, timeout_s, log_path):
    """Runs ``argv`` in a fresh loopback-only namespace; stderr goes to ``log_path``.
    Returns (exit code or None on timeout, stdout, number of leftover processes ended)."""
    marker = uuid.uuid4().hex
    with open(log_path, "w") as log:
        proc = subprocess.Popen(NETNS_PREFIX + argv, stdout=subprocess.PIPE, stderr=log,
                                text=True, env=child_env(marker), cwd=REPO,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            code = None
    return code, out, reap_leftovers(marker)


def parse_lines(text):
    """The JSON objects among the lines of ``text`` (other lines are ignored)."""
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return lines


def shown(path):
    """A path relative to the repo when it is inside it, else as it is."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def tail(path, n=15):
    """The last ``n`` lines of a log file, for error messages."""
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Deciding which systems can run.


def probe(system, log_dir):
    """Fills ``system.info`` from ``workload.py --info`` or sets ``system.unavailable``."""
    if not os.path.exists(system.python):
        system.unavailable = f"{shown(system.python)} does not exist"
        return
    log = os.path.join(log_dir, f"{system.name}-probe.log")
    code, out, _ = run_isolated([system.python, WORKLOAD, "--info", "--system", system.name],
                                120, log)
    infos = [line for line in parse_lines(out) if line.get("kind") == "info"]
    if code != 0 or not infos:
        system.unavailable = f"workload.py --info failed: {tail(log, 1).strip()[-300:]}"
        return
    system.info = infos[0]
    is_real_ray = bool(system.info.get("real_ray"))
    if system.name == "rayd" and is_real_ray:
        system.unavailable = f"`import ray` in {shown(system.python)} is real Ray, not rayd"
    elif system.name == "ray" and not is_real_ray:
        system.unavailable = f"`import ray` in {shown(system.python)} is not real Ray"


def has_overflow_checks(path, needle=b"with overflow", chunk=1 << 22):
    """Whether a Rust binary carries the "attempt to ... with overflow" panic messages: they
    are linked only where overflow checks are on, i.e. in a debug (dev profile) build."""
    with open(path, "rb") as f:
        tail_bytes = b""
        while True:
            block = f.read(chunk)
            if not block:
                return False
            if needle in tail_bytes + block:
                return True
            tail_bytes = block[-len(needle):]


def rayd_profile(python):
    """Which cargo profile built the raylet next to rayd's interpreter: "release", "debug" or
    "unknown" (no rayd-raylet there)."""
    installed = os.path.join(os.path.dirname(python), "rayd-raylet")
    if not os.path.exists(installed):
        return "unknown"
    return "debug" if has_overflow_checks(installed) else "release"


def check_rayd_profile(system, allow_debug):
    """Marks rayd unavailable when its daemons are a debug build: those figures mislead."""
    system.info["rayd_profile"] = rayd_profile(system.python)
    if system.info["rayd_profile"] == "debug" and not allow_debug:
        system.unavailable = (f"{shown(os.path.dirname(system.python))} holds debug daemons "
                              "(`make bench` installs release ones; --allow-debug runs anyway)")


# ---------------------------------------------------------------------------------------------
# The rounds.


# What the warm-up runs: the rows that write hundreds of MB into memory no process here
# touched yet. On a VM, the first touch of guest memory is the host's page fault, and whichever
# system ran first in round 1 paid it (rayd's first 100 MB put: 0.9-1.8 GB/s in four runs of
# round 1, against 3-4 GB/s in rounds 2 and 3).
WARMUP_METRICS = ["memcpy_100mb", "put_100mb", "memcpy_1gb", "put_1gb"]


def warm_up(live, args, log_dir):
    """Runs each system's memory rows that this run measures once, and drops the figures."""
    only = set(filter(None, args.only.split(",")))
    skip = set(filter(None, args.skip.split(",")))
    rows = [m for m in WARMUP_METRICS if (not only or m in only) and m not in skip]
    if not rows:
        return
    for system in live:
        note(f"warm-up: {system.name}")
        code, _, _ = run_isolated(
            [system.python, WORKLOAD, "--system", system.name, "--only", ",".join(rows),
             "--metric-timeout", str(args.metric_timeout)], args.timeout,
            os.path.join(log_dir, f"{system.name}-warmup.log"))
        if code != 0:
            note(f"  {system.name}: warm-up {'timed out' if code is None else f'exit {code}'}")


def run_rounds(systems, args, log_dir):
    """Runs the workload ``args.rounds`` times per available system, alternating the order,
    after a warm-up (``--no-warmup`` skips it). Returns every raw line, each tagged with its
    round."""
    raw = []
    live = [s for s in systems if not s.unavailable]
    if not args.no_warmup:
        warm_up(live, args, log_dir)
    extra = ["--reps", str(args.reps), "--metric-timeout", str(args.metric_timeout)]
    if args.only:
        extra += ["--only", args.only]
    if args.skip:
        extra += ["--skip", args.skip]
    for rnd in range(args.rounds):
        order = live if rnd % 2 == 0 else list(reversed(live))
        for system in order:
            log = os.path.join(log_dir, f"{system.name}-round{rnd}.log")
            note(f"round {rnd + 1}/{args.rounds}: {system.name}")
            start = time.monotonic()
            code, out, leftovers = run_isolated(
                [system.python, WORKLOAD, "--system", system.name] + extra, args.timeout, log)
            lines = parse_lines(out)
            for line in lines:
                line["round"] = rnd
            raw += lines
            status = "timed out" if code is None else f"exit {code}"
            note(f"  {system.name}: {len(lines)} lines, {status}, "
                 f"{time.monotonic() - start:.0f} s, {leftovers} leftover processes ended")
            if code != 0:
                raw.append({"system": system.name, "round": rnd, "kind": "run_error",
                            "error": f"workload {status}: {tail(log, 5).strip()[-500:]}"})
            if leftovers:
                raw.append({"system": system.name, "round": rnd, "kind": "leftovers",
                            "count": leftovers})
        if os.path.exists(args.plasma_bench) and not args.no_plasma:
            raw += run_plasma_bench(rnd, args, log_dir)
    return raw


def run_plasma_bench(rnd, args, log_dir):
    """One run of rayd-plasma-bench; its ``{"name","value","unit"}`` lines as raw lines."""
    note(f"round {rnd + 1}/{args.rounds}: rayd-plasma-bench")
    log = os.path.join(log_dir, f"plasma-round{rnd}.log")
    code, out, _ = run_isolated([args.plasma_bench], args.timeout, log)
    lines = [dict(line, system="rayd-plasma", round=rnd)
             for line in parse_lines(out) if "name" in line and "value" in line]
    if code != 0:
        lines.append({"system": "rayd-plasma", "round": rnd, "kind": "run_error",
                      "error": f"rayd-plasma-bench exit {code}: {tail(log, 5).strip()[-500:]}"})
    return lines


# ---------------------------------------------------------------------------------------------
# Merging and the table.


def merge(raw):
    """Merges raw lines into {(system, name): result} with samples of every round pooled.
    A metric with no sample anywhere keeps the last error it reported."""
    merged = {}
    for line in raw:
        name = line.get("name")
        if not name:
            continue
        key = (line["system"], name)
        entry = merged.setdefault(key, {"samples": [], "errors": [], "extra": {}})
        if "error" in line:
            entry["errors"].append(line["error"])
            continue
        samples = line.get("samples") or [line.get("value", line.get("median"))]
        entry["samples"] += [float(v) for v in samples]
        entry["unit"] = line.get("unit", "")
        entry["better"] = line.get("better", "")
        entry["extra"] = {k: v for k, v in line.items() if k not in {
            "system", "name", "median", "min", "max", "unit", "better", "samples", "reps",
            "round", "value"}}
    for entry in merged.values():
        if entry["samples"]:
            entry["median"] = statistics.median(entry["samples"])
            entry["min"] = min(entry["samples"])
            entry["max"] = max(entry["samples"])
    return merged


def metric_order(raw):
    """Metric names in the order the workload printed them (first seen first)."""
    order = []
    for line in raw:
        name = line.get("name")
        if name and line.get("system") != "rayd-plasma" and name not in order:
            order.append(name)
    return order


def fmt(value, unit=""):
    """A number with about three significant figures, thousands separated (yes/no for bools)."""
    if value is None:
        return "—"
    if unit == "bool":
        return "yes" if value >= 1 else "no"
    if float(value).is_integer() and abs(value) < 100:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(entry, unavailable):
    """One table cell: median [min–max], or why there is no figure."""
    if unavailable:
        return "unavailable"
    if entry is None:
        return "not run"
    if "median" not in entry:
        return "error: " + (entry["errors"][-1] if entry["errors"] else "?")[:40]
    unit = entry.get("unit", "")
    if entry["min"] == entry["max"]:
        return fmt(entry["median"], unit)
    return (f"{fmt(entry['median'], unit)} "
            f"[{fmt(entry['min'], unit)}–{fmt(entry['max'], unit)}]")


def ratio(rayd, ray):
    """rayd vs Ray, oriented so that > 1 means rayd is better; None when not computable."""
    if not rayd or not ray or "median" not in rayd or "median" not in ray:
        return None
    a, b = rayd["median"], ray["median"]
    if a <= 0 or b <= 0:
        return 1.0 if a == b else None
    return b / a if rayd.get("better") == "lower" else a / b


def table_rows(merged, raw, systems):
    """Rows (metric, unit, better, rayd cell, Ray cell, ratio) of the comparison."""
    by_name = {s.name: s for s in systems}
    rows = []
    for name in metric_order(raw):
        rayd, ray = merged.get(("rayd", name)), merged.get(("ray", name))
        any_entry = rayd if rayd and "unit" in rayd else ray or {}
        r = ratio(rayd, ray)
        rows.append((name, any_entry.get("unit", ""), any_entry.get("better", ""),
                     cell(rayd, by_name["rayd"].unavailable),
                     cell(ray, by_name["ray"].unavailable),
                     "—" if r is None else f"{r:,.0f}×" if r >= 100 else f"{r:.2f}×"))
    return rows


def plasma_rows(merged):
    """Rows (benchmark, unit, median [min–max]) of the plasma micro-benchmarks."""
    return [(name, entry.get("unit", ""), cell(entry, None))
            for (system, name), entry in sorted(merged.items()) if system == "rayd-plasma"]


def text_table(header, rows):
    """A plain aligned table for the terminal."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def md_table(header, rows):
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Machine and versions.


def read_first(path, prefix):
    """The value of the first ``prefix: value`` line of a /proc file."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git(*argv):
    """Output of a git command in the repo, or 'unknown'."""
    try:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info():
    """Cores, RAM, kernel, CPU model and load, for the report."""
    mem_kb = read_first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem_kb) / 2**20, 1) if mem_kb.isdigit() else "unknown",
        "kernel": platform.release(),
        "cpu": read_first("/proc/cpuinfo", "model name"),
        "load_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def rayd_commit():
    """The git commit the rayd figures belong to, marked dirty when the tree has changes."""
    commit = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("-dirty" if dirty and dirty != "unknown" else "")


def versions(systems):
    """Versions of everything that produced a figure."""
    by_name = {s.name: s for s in systems}
    ray_info, rayd_info = by_name["ray"].info, by_name["rayd"].info
    return {
        "rayd_commit": rayd_commit(),
        "rayd_python": rayd_info.get("python", "—"),
        "rayd_numpy": rayd_info.get("numpy", "—"),
        "rayd_sdk_version": rayd_info.get("ray_version", "—"),
        "rayd_profile": rayd_info.get("rayd_profile", "—"),
        "ray_version": ray_info.get("ray_version", "—"),
        "ray_python": ray_info.get("python", "—"),
        "ray_numpy": ray_info.get("numpy", "—"),
    }


# ---------------------------------------------------------------------------------------------
# Output.


HEADER = ("metric", "unit", "better", "rayd", "Ray", "ratio (>1: rayd better)")


def cluster_lines(merged):
    """Issue 12's cluster targets, per system: the cross-node round trip against the local one
    on the same cluster, and the 100 MB transfer rate."""
    lines = []
    for label, system in (("rayd", "rayd"), ("Ray", "ray")):
        local = merged.get((system, "cluster_local_roundtrip"), {}).get("median")
        remote = merged.get((system, "cluster_remote_roundtrip"), {}).get("median")
        rate = merged.get((system, "cluster_get_100mb_remote"), {}).get("median")
        parts = []
        if local and remote:
            parts.append(f"cross-node round trip {remote / local:.2f}× the local one (target ≤ 2×)")
        if rate:
            parts.append(f"100 MB across nodes at {rate:.2f} GB/s (target ≥ 1)")
        if parts:
            lines.append(f"Cluster ({label}): " + "; ".join(parts) + ".")
    return lines


def markdown_report(merged, raw, systems, machine, vers, args, started, elapsed):
    """The Markdown results page."""
    out = [f"# rayd vs Ray — {started} UTC", ""]
    out.append(f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['ram_gib']} GiB "
               f"RAM, kernel {machine['kernel']}; load average at start {machine['load_at_start']}"
               f", at end {machine['load_at_end']}.")
    out.append(f"Versions: rayd commit {vers['rayd_commit']} ({vers['rayd_profile']} daemons, "
               f"SDK {vers['rayd_sdk_version']}, "
               f"Python {vers['rayd_python']}, numpy {vers['rayd_numpy']}); Ray "
               f"{vers['ray_version']} (Python {vers['ray_python']}, numpy {vers['ray_numpy']}).")
    out.append(f"Run: {args.rounds} alternating rounds × {args.reps} repetition(s) per system, "
               "each in a loopback-only network namespace"
               f"{'' if args.no_warmup else ', after a discarded warm-up run of the memory rows'}"
               f"; {elapsed:.0f} s in all. "
               "Cells: median [min–max] over all samples.")
    for s in systems:
        if s.unavailable:
            out.append(f"{s.name}: unavailable — {s.unavailable}.")
    out += ["", md_table(HEADER, table_rows(merged, raw, systems)), ""]
    evidence = merged.get(("ray", "get_100mb_zero_copy"), {}).get("extra")
    rayd_evidence = merged.get(("rayd", "get_100mb_zero_copy"), {}).get("extra")
    for label, ev in (("rayd", rayd_evidence), ("Ray", evidence)):
        if ev:
            out.append(f"Zero-copy evidence ({label}): " + ", ".join(
                f"{k} = {v}" for k, v in ev.items()) + ".")
    for label, key in (("rayd", ("rayd", "idle_processes")), ("Ray", ("ray", "idle_processes"))):
        procs = merged.get(key, {}).get("extra", {}).get("processes")
        if procs:
            out.append(f"Processes at idle ({label}): {', '.join(procs)}.")
    out += cluster_lines(merged)
    plasma = plasma_rows(merged)
    if plasma:
        out += ["", "## rayd-plasma micro-benchmarks", "",
                md_table(("benchmark", "unit", "median [min–max]"), plasma)]
    problems = [line for line in raw if line.get("kind") in ("run_error", "leftovers")]
    if problems:
        out += ["", "## Problems during the run", ""]
        for line in problems:
            what = line.get("error") or f"{line['count']} leftover processes had to be ended"
            out.append(f"- {line['system']}, round {line['round'] + 1}: {what}")
    return "\n".join(out) + "\n"


def note(message):
    """Progress on stderr."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv):
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--reps", type=int, default=1,
                        help="repetitions of each metric inside one workload run (default 1)")
    parser.add_argument("--only", default="", help="comma-separated metrics (workload names)")
    parser.add_argument("--skip", default="", help="comma-separated metrics to skip")
    parser.add_argument("--systems", default="rayd,ray", help="which of rayd,ray to run")
    parser.add_argument("--rayd-python", default=os.path.join(REPO, ".venv", "bin", "python"))
    parser.add_argument("--ray-python",
                        default=os.path.join(BENCH, ".venv-ray", "bin", "python"))
    parser.add_argument("--plasma-bench", default=PLASMA_BENCH,
                        help="the plasma micro-benchmark binary (run when it exists)")
    parser.add_argument("--no-plasma", action="store_true", help="skip rayd-plasma-bench")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the discarded first run of each system's memory rows")
    parser.add_argument("--allow-debug", action="store_true",
                        help="measure rayd even when its daemons are a debug build")
    parser.add_argument("--timeout", type=int, default=900,
                        help="seconds one workload process may run")
    parser.add_argument("--metric-timeout", type=int, default=180,
                        help="seconds one metric may run inside the workload")
    parser.add_argument("--out", default=os.path.join(BENCH, "results"))
    parser.add_argument("--label", default="latest", help="results file names: LABEL.md/.jsonl")
    return parser.parse_args(argv)


def main(argv=None):
    """Probes both systems, runs the rounds, writes and prints the results."""
    args = parse_args(argv)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.monotonic()
    log_dir = os.path.join(args.out, "logs")
    os.makedirs(log_dir, exist_ok=True)
    machine = machine_info()
    wanted = set(args.systems.split(","))
    systems = [System("rayd", args.rayd_python), System("ray", args.ray_python)]
    problem = netns_problem()
    for system in systems:
        if system.name not in wanted:
            system.unavailable = "not selected (--systems)"
        elif problem:
            system.unavailable = f"no loopback-only network namespace: {problem}"
        else:
            probe(system, log_dir)
            if system.name == "rayd" and not system.unavailable:
                check_rayd_profile(system, args.allow_debug)
        note(f"{system.name}: {system.unavailable or system.info.get('ray_module')}")

    raw = [dict(s.info, round=-1) for s in systems if s.info]
    raw += run_rounds(systems, args, log_dir)
    machine["load_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    merged = merge(raw)
    vers = versions(systems)

    with open(os.path.join(args.out, f"{args.label}.jsonl"), "w") as f:
        f.write(json.dumps({"kind": "run", "started": started, "machine": machine,
                            "versions": vers, "rounds": args.rounds, "reps": args.reps,
                            "unavailable": {s.name: s.unavailable for s in systems}}) + "\n")
        for line in raw:
            f.write(json.dumps(line) + "\n")
    report = markdown_report(merged, raw, systems, machine, vers, args, started,
                             time.monotonic() - t0)
    with open(os.path.join(args.out, f"{args.label}.md"), "w") as f:
        f.write(report)

    print(text_table(HEADER, table_rows(merged, raw, systems)))
    for line in cluster_lines(merged):
        print(line)
    plasma = plasma_rows(merged)
    if plasma:
        print()
        print(text_table(("rayd-plasma benchmark", "unit", "median [min–max]"), plasma))
    for s in systems:
        if s.unavailable:
            print(f"{s.name}: unavailable — {s.unavailable}")
    note(f"wrote {os.path.relpath(args.out, REPO)}/{args.label}.md and .jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
