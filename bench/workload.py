#!/usr/bin/env python3
"""The benchmark workload: one script that runs unchanged against rayd and against real Ray.

It uses only the public Ray API (``ray.init(num_cpus=2)``, remote functions and classes,
``get``/``put``/``wait``, ``shutdown``) and ``ray.cluster_utils.Cluster`` (three nodes on this
machine for the ``cluster_*`` metrics), so whichever ``ray`` the interpreter imports is the
system measured. Each metric is repeated ``--reps`` times and printed as one JSON line::

    {"system": "ray", "name": "task_roundtrip", "median": 1612.0, "min": ..., "max": ...,
     "unit": "us", "better": "lower", "samples": [...], ...}

A metric that raises (for example actors, before rayd has them) is printed as
``{"system": ..., "name": ..., "error": "..."}`` and the run goes on. A first line with
``"kind": "info"`` describes the interpreter and the ``ray`` module that was imported.

``bench/run.py`` runs this script for both systems, alternating, and merges the samples.
"""

import argparse
import json
import os
import signal
import statistics
import sys
import time
import uuid

import numpy as np
import ray

try:
    import psutil
except ImportError:  # the process metrics report an error instead
    psutil = None

MB = 1_000_000
GB = 1_000_000_000
NUM_CPUS = 2
# Environment variable set in the driver before ray.init: processes that inherit it belong to
# the session even when they were daemonized away from the driver's process tree.
SESSION_MARKER = "RAYBENCH_SESSION"
IDLE_SECONDS = 10.0


# ---------------------------------------------------------------------------------------------
# Remote functions and classes (defined once, at import, as a user program would).


@ray.remote
def empty():
    """A task that does nothing: its round trip is pure system overhead."""
    return None


@ray.remote
def increment(x):
    """One link of a dependency chain."""
    return x + 1


@ray.remote
def array_last(a):
    """Reads one element of an array argument (the argument arrives through the object store)."""
    return float(a[-1])


@ray.remote
def generate_data():
    """The seed's tree-reduce leaf."""
    return np.random.normal(size=1000)


@ray.remote
def aggregate_data(x, y):
    """The seed's tree-reduce inner node."""
    return x + y


@ray.remote
def sub_experiment(i, j):
    """The seed's nested sub-experiment."""
    return i + j


@ray.remote
def run_experiment(i):
    """The seed's experiment: launches 10 nested tasks and sums their results."""
    sub_results = []
    for j in range(10):
        sub_results.append(sub_experiment.remote(i, j))
    return sum(ray.get(sub_results))


class Counter:
    """A minimal actor: each call is almost pure call overhead. Made remote on first use (see
    ``actor_class``), so a system without actors fails only the actor metrics."""

    def __init__(self):
        self.n = 0

    def ping(self):
        """Returns nothing; used for round trips."""
        return None

    def incr(self):
        """Counts calls, so the async benchmark can check that every call ran."""
        self.n += 1
        return self.n


# ---------------------------------------------------------------------------------------------
# Small helpers.


def timed(fn):
    """Runs ``fn()`` and returns (seconds, result)."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def check(condition, message):
    """Raises AssertionError with ``message`` (also under ``python -O``) unless condition holds."""
    if not condition:
        raise AssertionError(message)


class MetricTimeout(Exception):
    """A metric ran past --metric-timeout."""


def _on_alarm(signum, frame):
    raise MetricTimeout("metric timed out")


def emit(line):
    """Prints one JSON line and flushes, so a killed run still leaves what it measured."""
    print(json.dumps(line), flush=True)


def summarize(system, name, samples, unit, better, extra=None):
    """Builds a result line from the samples of one metric."""
    line = {
        "system": system,
        "name": name,
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "unit": unit,
        "better": better,
        "samples": samples,
        "reps": len(samples),
    }
    line.update(extra or {})
    return line


# ---------------------------------------------------------------------------------------------
# Start, stop and idle footprint: each repetition is its own init / idle / shutdown cycle.


def snapshot_pids():
    """The set of pids alive now."""
    return set(psutil.pids())


def session_processes(before, started_at, marker):
    """Every process that ray.init started: new descendants of this driver, plus new processes
    that carry this session's environment marker (daemonized ones), plus their descendants."""
    me = psutil.Process()
    found = {}
    for child in me.children(recursive=True):
        found[child.pid] = child
    for proc in psutil.process_iter(["pid", "create_time"]):
        pid = proc.info["pid"]
        if pid in before or pid in found or pid == me.pid:
            continue
        if (proc.info["create_time"] or 0) < started_at - 1.0:
            continue
        try:
            if proc.environ().get(SESSION_MARKER) == marker:
                found[pid] = proc
        except (psutil.Error, OSError):
            continue
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                if child.pid not in before:
                    found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(found.values())


def footprint(processes):
    """Summed RSS and PSS (bytes) and the names of the processes that are still alive."""
    rss = pss = 0
    names = []
    for proc in processes:
        try:
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", 0)
            names.append(proc.name())
        except psutil.Error:
            continue
    return rss, pss, sorted(names)


def init_cycle():
    """One ray.init(num_cpus=2), 10 s idle, footprint, ray.shutdown(). Returns a dict."""
    marker = uuid.uuid4().hex
    os.environ[SESSION_MARKER] = marker
    before = snapshot_pids()
    started_at = time.time()
    init_s, _ = timed(lambda: ray.init(num_cpus=NUM_CPUS))
    # The metric itself asks for the footprint after 10 s of idleness.
    time.sleep(IDLE_SECONDS)
    procs = session_processes(before, started_at, marker)
    rss, pss, names = footprint(procs)
    shutdown_s, _ = timed(ray.shutdown)
    return {
        "init_s": init_s,
        "shutdown_s": shutdown_s,
        "count": len(names),
        "rss": rss,
        "pss": pss,
        "names": names,
    }


def bench_lifecycle(system, reps):
    """ray.init() time, ray.shutdown() time, process count and summed RSS after 10 s idle."""
    if psutil is None:
        raise RuntimeError("psutil is not installed")
    cycles = [init_cycle() for _ in range(reps)]
    names = cycles[-1]["names"]
    return [
        summarize(system, "init", [c["init_s"] * 1e3 for c in cycles], "ms", "lower"),
        summarize(system, "shutdown", [c["shutdown_s"] * 1e3 for c in cycles], "ms", "lower"),
        summarize(system, "idle_processes", [c["count"] for c in cycles], "count", "lower",
                  {"processes": names}),
        summarize(system, "idle_rss", [c["rss"] / 2**20 for c in cycles], "MiB", "lower",
                  {"pss_mib": [round(c["pss"] / 2**20, 1) for c in cycles]}),
    ]


# ---------------------------------------------------------------------------------------------
# Tasks.


def task_roundtrip(n=500):
    """Mean latency (µs) of ``ray.get(empty.remote())``, one at a time."""
    ray.get([empty.remote() for _ in range(20)])  # warm: workers started, function exported
    seconds, _ = timed(lambda: [ray.get(empty.remote()) for _ in range(n)])
    return seconds / n * 1e6


def async_tasks(n=10_000):
    """Tasks per second: submit ``n`` empty tasks from the driver, then get them all."""
    ray.get([empty.remote() for _ in range(20)])
    seconds, results = timed(lambda: ray.get([empty.remote() for _ in range(n)]))
    check(len(results) == n, "lost results")
    return n / seconds


def task_chain(n=1000):
    """Milliseconds for a chain of ``n`` tasks, each taking the previous one's result by ID."""
    ray.get(increment.remote(0))

    def run():
        x = increment.remote(0)
        for _ in range(n - 1):
            x = increment.remote(x)
        return ray.get(x)

    seconds, value = timed(run)
    check(value == n, f"chain returned {value}, expected {n}")
    return seconds * 1e3


def array_task(size=40 * MB, n=5):
    """Mean milliseconds for a task given a ``size``-byte array by object ID (put beforehand),
    one call at a time."""
    array = np.arange(size // 8, dtype=np.float64)
    ref = ray.put(array)
    ray.get(array_last.remote(ray.put(np.zeros(8))))  # warm the worker and the function
    seconds, values = timed(lambda: [ray.get(array_last.remote(ref)) for _ in range(n)])
    check(values == [float(array[-1])] * n, "wrong value from the array task")
    del ref
    return seconds / n * 1e3


def tree_reduce():
    """Milliseconds for the seed's tree reduce: 100 leaves of 1,000 normals, pairwise sums."""

    def run():
        data = [generate_data.remote() for _ in range(100)]
        while len(data) > 1:
            data.append(aggregate_data.remote(data.pop(0), data.pop(0)))
        return ray.get(data)

    seconds, result = timed(run)
    check(len(result) == 1 and result[0].shape == (1000,), "wrong tree-reduce result")
    return seconds * 1e3


def nested_experiment():
    """Milliseconds for the seed's nested experiment: 5 tasks that each launch 10 tasks."""
    seconds, result = timed(lambda: ray.get([run_experiment.remote(i) for i in range(5)]))
    check(result == [45, 55, 65, 75, 85], f"nested experiment returned {result}")
    return seconds * 1e3


# ---------------------------------------------------------------------------------------------
# Objects.


def small_put_get(n=2000):
    """``ray.put`` + ``ray.get`` pairs per second of a 100-byte value."""
    value = b"x" * 100
    for _ in range(20):
        ray.get(ray.put(value))

    def run():
        for _ in range(n):
            check(ray.get(ray.put(value)) == value, "small put/get changed the value")

    seconds, _ = timed(run)
    return n / seconds


def big_array(size=100 * MB):
    """An array of ``size`` bytes whose pages are all touched (no lazy zero pages)."""
    return np.arange(size // 8, dtype=np.float64)


def memcpy_rate(size=100 * MB, n=5):
    """GB/s of a plain copy of ``size`` bytes between two touched buffers in this process (mean
    of n): the ceiling of a put."""
    src = big_array(size)
    dst = np.empty_like(src)
    dst.fill(1.0)
    seconds, _ = timed(lambda: [np.copyto(dst, src) for _ in range(n)])
    return n * size / seconds / GB


def put_rate(size=100 * MB, n=3):
    """GB/s of ``ray.put`` of a ``size``-byte numpy array (mean of n puts, each freed after)."""
    array = big_array(size)
    total = 0.0
    for _ in range(n):
        seconds, ref = timed(lambda: ray.put(array))
        total += seconds
        del ref
    return n * size / total / GB


def put_paced(size=100 * MB, n=5, pause=0.3):
    """GB/s of ``ray.put`` of a ``size``-byte array ``pause`` seconds after the previous one
    (mean of n): a program that computes between its puts, so that a store may prepare
    memory in the pauses (``put_100mb`` puts back to back)."""
    array = big_array(size)
    total = 0.0
    for _ in range(n):
        time.sleep(pause)
        seconds, ref = timed(lambda: ray.put(array))
        total += seconds
        del ref
    return n * size / total / GB


def get_big(size=100 * MB, n=20):
    """Mean latency (µs) of ``ray.get`` of a stored ``size``-byte array, and zero-copy
    evidence."""
    ref = ray.put(big_array(size))
    first = ray.get(ref)
    second = ray.get(ref)
    evidence = {
        "read_only": not first.flags.writeable,
        "owns_data": bool(first.flags.owndata),
        "shares_memory_across_gets": bool(np.shares_memory(first, second)),
    }
    check(first[-1] == float(size // 8 - 1), "wrong value from get")
    del first, second

    def run():
        for _ in range(n):
            value = ray.get(ref)
            del value

    seconds, _ = timed(run)
    del ref
    return seconds / n * 1e6, evidence


def memcpy_1gb():
    return memcpy_rate(GB, 2)


def put_1gb():
    # One put per repetition: on a small machine, more would measure spilling (before rayd
    # freed puts whose references went, they all stayed until the store was full).
    return put_rate(GB, 1)


def get_1gb():
    return get_big(GB, 5)[0]


# ---------------------------------------------------------------------------------------------
# Spilling: a session of its own with a small store, so that puts beyond it go to disk.

SPILL_STORE = 400 * MB
SPILL_OBJECT = 100 * MB
SPILL_OBJECTS = 12
SPILL_METRICS = ["spill_write", "spill_restore"]


def bench_spilling(system, reps):
    """GB/s of ``ray.put`` into a full 400 MB store (each put needs as many bytes spilled to
    disk; 8 puts of 100 MB after 4 that fill it), and of ``ray.get`` of the 8 objects spilled
    first (restored from disk, then read once whole)."""
    array = big_array(SPILL_OBJECT)
    last = float(SPILL_OBJECT // 8 - 1)
    fill = SPILL_STORE // SPILL_OBJECT
    writes, restores = [], []
    for _ in range(reps):
        ray.init(num_cpus=NUM_CPUS, object_store_memory=SPILL_STORE)
        try:
            refs = [ray.put(array) for _ in range(fill)]
            seconds, more = timed(lambda: [ray.put(array) for _ in range(SPILL_OBJECTS - fill)])
            refs += more
            writes.append(len(more) * SPILL_OBJECT / seconds / GB)
            spilled = refs[: len(more)]

            def restore():
                for ref in spilled:
                    value = ray.get(ref)
                    check(value[-1] == last and float(value.sum()) > 0, "wrong restored value")
                    del value

            seconds, _ = timed(restore)
            restores.append(len(spilled) * SPILL_OBJECT / seconds / GB)
            del refs, spilled, more
        finally:
            ray.shutdown()
    return [summarize(system, "spill_write", writes, "GB/s", "higher"),
            summarize(system, "spill_restore", restores, "GB/s", "higher")]


def run_spilling(system, reps, timeout_s, wanted):
    """Runs the spilling sessions and emits the spilling metrics that are wanted."""
    signal.alarm(timeout_s)
    try:
        lines = bench_spilling(system, reps)
    except BaseException as exc:  # report both as failed, go on
        if isinstance(exc, KeyboardInterrupt):
            raise
        lines = [{"system": system, "name": n, "error": f"{type(exc).__name__}: {exc}"}
                 for n in SPILL_METRICS]
        if ray.is_initialized():
            ray.shutdown()
    finally:
        signal.alarm(0)
    for line in lines:
        if line["name"] in wanted:
            emit(line)


# ---------------------------------------------------------------------------------------------
# Actors.


_remote_counter = []


def actor_class():
    """``ray.remote(Counter)``, made once, when the first actor metric runs."""
    if not _remote_counter:
        _remote_counter.append(ray.remote(Counter))
    return _remote_counter[0]


def release(handle):
    """Ends an actor with ``ray.kill`` where the system has it (else its handle just goes)."""
    kill = getattr(ray, "kill", None)
    if kill is not None:
        kill(handle)


def actor_first_call():
    """Milliseconds from creating a ``Counter`` actor to the first method result."""
    start = time.perf_counter()
    handle = actor_class().remote()
    ray.get(handle.ping.remote())
    seconds = time.perf_counter() - start
    release(handle)
    return seconds * 1e3


def actor_roundtrip(n=500):
    """Mean latency (µs) of ``ray.get(actor.ping.remote())``, one at a time."""
    handle = actor_class().remote()
    ray.get([handle.ping.remote() for _ in range(20)])
    seconds, _ = timed(lambda: [ray.get(handle.ping.remote()) for _ in range(n)])
    release(handle)
    return seconds / n * 1e6


def actor_async_calls(n=10_000):
    """Calls per second: submit ``n`` calls on one actor, then get them all (in order)."""
    handle = actor_class().remote()
    ray.get(handle.ping.remote())
    seconds, results = timed(lambda: ray.get([handle.incr.remote() for _ in range(n)]))
    check(results == list(range(1, n + 1)), "actor calls ran out of order or were lost")
    release(handle)
    return n / seconds


# ---------------------------------------------------------------------------------------------
# A cluster of three 1-CPU nodes on this machine (``ray.cluster_utils.Cluster``), node K with the
# custom resource {"nodeK": 1}; the driver is attached to node 1.

CLUSTER_NODES = 3
CLUSTER_STORE = 500 * MB


@ray.remote(num_cpus=1)
def sleep_one():
    """A 1 s task: six of them on three 1-CPU nodes take 2 s when they spread."""
    time.sleep(1.0)


@ray.remote(num_returns=2)
def make_array(size):
    """A small ready flag and a ``size``-byte array, made where the task runs: the flag says the
    array exists without moving it."""
    return True, big_array(size)


def on_node(fn, k):
    """``fn`` pinned to node ``k`` by its custom resource."""
    return fn.options(resources={f"node{k}": 1})


def start_cluster():
    """Three 1-CPU nodes, node K with {"nodeK": 1}; connects this driver to node 1."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"node1": 1}, "object_store_memory": CLUSTER_STORE})
    try:
        for k in range(2, CLUSTER_NODES + 1):
            cluster.add_node(num_cpus=1, resources={f"node{k}": 1}, object_store_memory=CLUSTER_STORE)
        cluster.wait_for_nodes()
        cluster.connect()
        alive = [n for n in ray.nodes() if n.get("Alive", n.get("alive"))]
        check(len(alive) == CLUSTER_NODES, f"{len(alive)} nodes alive, expected {CLUSTER_NODES}")
        # Every node's worker is up and has the functions.
        ray.get([on_node(empty, k).remote() for k in range(1, CLUSTER_NODES + 1)])
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def cluster_tasks(n=300):
    """Tasks per second: ``n`` empty 1-CPU tasks from the driver, free to go to any node."""
    seconds, results = timed(lambda: ray.get([empty.remote() for _ in range(n)]))
    check(len(results) == n, "lost results")
    return n / seconds


def cluster_sleeps(n=6):
    """Milliseconds for six 1 s tasks on three 1-CPU nodes (2,000 when they spread)."""
    seconds, _ = timed(lambda: ray.get([sleep_one.remote() for _ in range(n)]))
    return seconds * 1e3


def roundtrip_on(k, n=200):
    """Mean latency (µs) of ``ray.get`` of an empty task pinned to node ``k``, one at a time."""
    task = on_node(empty, k)
    ray.get([task.remote() for _ in range(10)])
    seconds, _ = timed(lambda: [ray.get(task.remote()) for _ in range(n)])
    return seconds / n * 1e6


def cluster_local_roundtrip():
    """The round trip to a task pinned to the driver's own node (the cross-node one's yardstick)."""
    return roundtrip_on(1)


def cluster_remote_roundtrip():
    """The round trip to a task pinned to node 2, from the driver on node 1."""
    return roundtrip_on(2)


def cluster_get_remote(size=100 * MB):
    """GB/s of ``ray.get`` on node 1 of a ``size``-byte array made by a task on node 2 (the
    task has finished before the clock starts)."""
    ready, ref = on_node(make_array, 2).remote(size)
    check(ray.get(ready) is True, "the producer failed")
    seconds, value = timed(lambda: ray.get(ref))
    check(value.shape == (size // 8,) and value[-1] == float(size // 8 - 1), "wrong array")
    del value, ref
    return size / seconds / GB


CLUSTER_METRICS = {
    "cluster_tasks_300": (cluster_tasks, "tasks/s", "higher"),
    "cluster_sleep_6x1s": (cluster_sleeps, "ms", "lower"),
    "cluster_local_roundtrip": (cluster_local_roundtrip, "us", "lower"),
    "cluster_remote_roundtrip": (cluster_remote_roundtrip, "us", "lower"),
    "cluster_get_100mb_remote": (cluster_get_remote, "GB/s", "higher"),
}


# ---------------------------------------------------------------------------------------------
# The table of metrics run inside one ray.init session: name -> (function, unit, better).
# A function returns a number, or (number, extra fields for the result line).

SESSION_METRICS = {
    "task_roundtrip": (task_roundtrip, "us", "lower"),
    "async_tasks_10k": (async_tasks, "tasks/s", "higher"),
    "task_chain_1000": (task_chain, "ms", "lower"),
    "small_put_get": (small_put_get, "ops/s", "higher"),
    "memcpy_100mb": (memcpy_rate, "GB/s", "higher"),
    "put_100mb": (put_rate, "GB/s", "higher"),
    "get_100mb": (get_big, "us", "lower"),
    "memcpy_1gb": (memcpy_1gb, "GB/s", "higher"),
    "put_1gb": (put_1gb, "GB/s", "higher"),
    "get_1gb": (get_1gb, "us", "lower"),
    # After the 1 GB rows, where it has always been (rayd used to free no put, and their
    # objects pushed the rows after them towards spilling on a smaller machine).
    "put_100mb_paced": (put_paced, "GB/s", "higher"),
    "task_40mb_arg": (array_task, "ms", "lower"),
    "tree_reduce_seed": (tree_reduce, "ms", "lower"),
    "nested_5x10_seed": (nested_experiment, "ms", "lower"),
    "actor_first_call": (actor_first_call, "ms", "lower"),
    "actor_roundtrip": (actor_roundtrip, "us", "lower"),
    "actor_async_calls_10k": (actor_async_calls, "calls/s", "higher"),
}
LIFECYCLE_METRICS = ["init", "shutdown", "idle_processes", "idle_rss"]
ALL_METRICS = LIFECYCLE_METRICS + list(SESSION_METRICS) + SPILL_METRICS + list(CLUSTER_METRICS)


def run_metric(system, name, reps, timeout_s):
    """Runs one session or cluster metric ``reps`` times; returns its result line (or an
    error line)."""
    fn, unit, better = SESSION_METRICS.get(name) or CLUSTER_METRICS[name]
    samples, extra = [], {}
    signal.alarm(timeout_s)
    try:
        for _ in range(reps):
            value = fn()
            if isinstance(value, tuple):
                value, extra = value
            samples.append(float(value))
    except BaseException as exc:  # report and go on; KeyboardInterrupt still stops the run
        if isinstance(exc, KeyboardInterrupt):
            raise
        return {"system": system, "name": name, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        signal.alarm(0)
    if name == "get_100mb":
        emit(zero_copy_line(system, extra, reps))
        extra = {}
    return summarize(system, name, samples, unit, better, extra)


def zero_copy_line(system, evidence, reps):
    """The get_100mb_zero_copy result: 1 when ``get`` returned a read-only view that does not own
    its data and two gets share memory (so nothing was copied), else 0."""
    zero_copy = (evidence["read_only"] and not evidence["owns_data"]
                 and evidence["shares_memory_across_gets"])
    return summarize(system, "get_100mb_zero_copy", [1.0 if zero_copy else 0.0] * reps,
                     "bool", "higher", evidence)


def run_lifecycle(system, reps, timeout_s, wanted):
    """Runs the init/idle/shutdown cycles and emits the lifecycle metrics that are wanted."""
    signal.alarm(timeout_s + int(reps * (IDLE_SECONDS + 5)))
    try:
        lines = bench_lifecycle(system, reps)
    except Exception as exc:  # report every lifecycle metric as failed, go on
        lines = [{"system": system, "name": n, "error": f"{type(exc).__name__}: {exc}"}
                 for n in LIFECYCLE_METRICS]
        if ray.is_initialized():
            ray.shutdown()
    finally:
        signal.alarm(0)
    for line in lines:
        if line["name"] in wanted:
            emit(line)


def describe(system):
    """The info line: interpreter, numpy, the imported ray module and its distribution."""
    info = {
        "system": system,
        "kind": "info",
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "numpy": np.__version__,
        "ray_version": getattr(ray, "__version__", "unknown"),
        "ray_module": getattr(ray, "__file__", None),
    }
    try:
        from importlib import metadata

        info["ray_distributions"] = metadata.packages_distributions().get("ray", [])
    except Exception:  # older interpreters: the info is optional
        info["ray_distributions"] = []
    # Real Ray ships its C++ GCS server inside the package; rayd's package never does.
    package_dir = os.path.dirname(info["ray_module"] or "")
    info["real_ray"] = os.path.exists(os.path.join(package_dir, "core/src/ray/gcs/gcs_server"))
    return info


def parse_args(argv):
    """Command line: which system label to print, how many repetitions, which metrics."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--system", default="ray", help="label printed in every line")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each metric")
    parser.add_argument("--only", default="", help="comma-separated metric names to run")
    parser.add_argument("--skip", default="", help="comma-separated metric names to skip")
    parser.add_argument("--metric-timeout", type=int, default=180,
                        help="seconds one metric (all its repetitions) may take")
    parser.add_argument("--list", action="store_true", help="print the metric names and exit")
    parser.add_argument("--info", action="store_true",
                        help="print only the info line (which ray is imported) and exit")
    return parser.parse_args(argv)


def selected_metrics(args):
    """The metric names to run, in table order."""
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    unknown = (only | skip) - set(ALL_METRICS) - {"get_100mb_zero_copy"}
    if unknown:
        raise SystemExit(f"unknown metrics: {', '.join(sorted(unknown))}")
    return [n for n in ALL_METRICS if (not only or n in only) and n not in skip]


def main(argv=None):
    """Runs the selected metrics and prints one JSON line each."""
    args = parse_args(argv)
    if args.list:
        print("\n".join(ALL_METRICS))
        return 0
    wanted = selected_metrics(args)
    emit(describe(args.system))
    if args.info:
        return 0
    signal.signal(signal.SIGALRM, _on_alarm)
    if any(n in LIFECYCLE_METRICS for n in wanted):
        run_lifecycle(args.system, args.reps, args.metric_timeout, wanted)
    session = [n for n in wanted if n in SESSION_METRICS]
    if session:
        try:
            ray.init(num_cpus=NUM_CPUS)
        except Exception as exc:  # every session metric fails with the same reason
            for name in session:
                emit({"system": args.system, "name": name,
                      "error": f"ray.init: {type(exc).__name__}: {exc}"})
            return 1
        try:
            for name in session:
                emit(run_metric(args.system, name, args.reps, args.metric_timeout))
        finally:
            ray.shutdown()
    if any(n in SPILL_METRICS for n in wanted):
        run_spilling(args.system, args.reps, args.metric_timeout, wanted)
    clustered = [n for n in wanted if n in CLUSTER_METRICS]
    if clustered:
        run_cluster(args, clustered)
    return 0


def run_cluster(args, names):
    """Runs the cluster metrics on one three-node cluster, started and stopped here."""
    signal.alarm(args.metric_timeout)
    try:
        cluster = start_cluster()
    except BaseException as exc:  # every cluster metric fails with the same reason
        if isinstance(exc, KeyboardInterrupt):
            raise
        for name in names:
            emit({"system": args.system, "name": name,
                  "error": f"cluster start: {type(exc).__name__}: {exc}"})
        return
    finally:
        signal.alarm(0)
    try:
        for name in names:
            emit(run_metric(args.system, name, args.reps, args.metric_timeout))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
