"""The chaos suite: a three-node cluster on this machine runs a mixed workload while a loop
kills, at random, a worker, a raylet, a plasma store or a whole non-head node, and puts
the lost capacity back (a new node). It checks that every result is right or a documented
error, that no `ray.get` hangs (each has a deadline), and that nothing is left behind
(processes, shared memory) after the cluster stops; it prints a summary.

    python scripts/chaos.py [--tasks 10000] [--out bench/results/chaos.md]

A raylet or plasma store killed on a non-systemd machine is not restarted by anyone: the
node is then declared dead, and the loop adds a replacement node, as an operator's
supervisor would restart its daemons as a new node. A killed Redis shard (not the
primary) is restarted, empty, by its supervisor: stores report their objects' locations
again, raylets their actors, drivers their functions; the lineage it held is gone, so an
object lost later whose task was recorded there raises `ObjectLostError` (documented).
"""

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List

import numpy as np

import ray
from ray.cluster_utils import Cluster

# The errors a run may end with, by design: the object could not be rebuilt, an actor ran
# out of restarts, a task out of retries.
DOCUMENTED = (ray.exceptions.ObjectLostError, ray.exceptions.RayActorError, ray.exceptions.RayWorkerError)
DEATH_TIMEOUT_MS = 1500
GET_DEADLINE_S = 60.0
TASK_S = 0.005
NODE_ARGS = {"num_cpus": 1, "resources": {"pool": 1}, "object_store_memory": 200 * 10**6}


@ray.remote(max_retries=5)
def seed(i: int) -> int:
    return i


@ray.remote(max_retries=5)
def add(a: int, b: int) -> int:
    # A little work, so that faults land while tasks run.
    time.sleep(TASK_S)
    return a + b


@ray.remote(max_retries=5)
def blob(i: int) -> np.ndarray:
    return np.full(2 * 10**6 // 8, i, dtype=np.int64)


@ray.remote(max_retries=5)
def total(a: np.ndarray) -> int:
    return int(a.sum())


@ray.remote(max_retries=5)
def nested_blobs(base: int) -> List[Any]:
    # Submitted from a worker: their results stay in the stores of the nodes that made
    # them, where a fault can take them (and lineage must bring them back).
    return [blob.remote(base + i) for i in range(3)]


@ray.remote(max_restarts=100)
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class Faults:
    """The loop that breaks the cluster, and what it did."""

    def __init__(self, cluster: Cluster, period_s: float, rng: random.Random):
        self.cluster = cluster
        self.period_s = period_s
        self.rng = rng
        self.done: Dict[str, int] = {}
        self.stop = threading.Event()
        self.errors: List[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _pids(self, node: Any, name: str) -> List[int]:
        return [pid for daemon, pid in node.processes if daemon == name]

    def _workers(self, node: Any) -> List[int]:
        return [pid for pid in node.all_pids() if "rayd-worker" in _cmdline(pid)]

    def _replace(self, node: Any) -> None:
        self.cluster.kill_node(node, remove_dir=False)
        self.cluster.add_node(wait=False, **NODE_ARGS)

    def _once(self) -> None:
        nodes = list(self.cluster.worker_nodes)
        if not nodes:
            return
        node = self.rng.choice(nodes)
        # Shard restarts lose lineage for good: rarer, so that rebuilding shows too.
        kind = self.rng.choices(["worker", "raylet", "plasma", "node", "shard"], [3, 2, 2, 2, 1])[0]
        if kind == "shard":
            # A Redis shard (not the primary) of the head: its supervisor restarts it, empty.
            primary_port = (self.cluster.address or ":").rsplit(":", 1)[1]
            shards = [pid for pid in self.cluster.head_node.all_pids()
                      if "redis-server" in _cmdline(pid) and f":{primary_port}" not in _cmdline(pid)]
            if not shards:
                return
            os.kill(self.rng.choice(shards), signal.SIGKILL)
        elif kind == "worker":
            pids = self._workers(node) + self._workers(self.cluster.head_node)
            if not pids:
                return
            os.kill(self.rng.choice(pids), signal.SIGKILL)
        elif kind in ("raylet", "plasma"):
            for pid in self._pids(node, f"rayd-{kind}"):
                os.kill(pid, signal.SIGKILL)
            self._replace(node)
        else:
            self._replace(node)
        self.done[kind] = self.done.get(kind, 0) + 1

    def _run(self) -> None:
        while not self.stop.wait(self.period_s * (0.5 + self.rng.random())):
            try:
                self._once()
            except Exception as e:  # a fault that could not be injected is reported
                self.errors.append(f"{type(e).__name__}: {e}")


def workload(tasks: int, deadline_s: float) -> Dict[str, Any]:
    """Runs `tasks` tasks in a dependency lattice, blobs and actor calls; checks each."""
    width = 50
    outcome: Dict[str, Any] = {"right": 0, "wrong": 0, "hangs": 0, "hung": {}, "errors": {}}

    def check(ref: Any, expected: Callable[[Any], bool], what: str = "task") -> None:
        try:
            value = ray.get(ref, timeout=deadline_s)
        except ray.exceptions.GetTimeoutError:
            outcome["hangs"] += 1
            outcome["hung"][what] = outcome["hung"].get(what, 0) + 1
            print(f"chaos: a {what} result did not come within {deadline_s} s: {ref!r}", file=sys.stderr)
            return
        except DOCUMENTED as e:
            name = type(e).__name__
            outcome["errors"][name] = outcome["errors"].get(name, 0) + 1
            return
        outcome["right" if expected(value) else "wrong"] += 1

    counters = [Counter.remote() for _ in range(2)]
    # Objects made by nested tasks, read again at the end: by then many of the nodes
    # that held them are gone, and lineage must make them again.
    kept: List[Any] = []
    levels = max(1, tasks // width)
    row = [seed.remote(i) for i in range(width)]
    want = list(range(width))
    submitted = width
    for level in range(1, levels):
        row = [add.remote(row[i], row[(i + 1) % width]) for i in range(width)]
        want = [want[i] + want[(i + 1) % width] for i in range(width)]
        submitted += width
        if level % 10 == 0:
            blobs = [blob.remote(level * 100 + i) for i in range(3)]
            try:
                nested = ray.get(nested_blobs.remote(level * 100 + 3), timeout=deadline_s)
                kept.extend((ref, level * 100 + 3 + i) for i, ref in enumerate(nested))
            except (ray.exceptions.GetTimeoutError,) + DOCUMENTED as e:
                outcome["errors"][type(e).__name__] = outcome["errors"].get(type(e).__name__, 0) + 1
            sums = [total.remote(b) for b in blobs]
            submitted += 2 * len(blobs) + 4
            for i, s in enumerate(sums):
                n = level * 100 + i
                check(s, lambda v, n=n: v == n * (2 * 10**6 // 8), "blob sum")
            for c in counters:
                check(c.incr.remote(), lambda v: isinstance(v, int) and v >= 1, "actor call")
            # Keep the lattice's numbers small enough to check exactly.
            for i, expected in enumerate(want):
                check(row[i], lambda v, e=expected: v == e)
            row = [seed.remote(i) for i in range(width)]
            want = list(range(width))
            submitted += width
    for i, expected in enumerate(want):
        check(row[i], lambda v, e=expected: v == e)
    for ref, n in kept:
        check(total.remote(ref), lambda v, n=n: v == n * (2 * 10**6 // 8), "kept blob sum")
    submitted += len(kept)
    outcome["submitted"] = submitted
    return outcome


def leftovers(temp_dirs: List[str]) -> List[str]:
    """Processes and shared-memory files of the cluster still there after it stopped."""
    left = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        if any(d in command for d in temp_dirs):
            left.append(f"process {pid}: {command[:120]}")
    for path in glob.glob("/dev/shm/*"):
        if any(os.path.basename(d) in path for d in temp_dirs):
            left.append(f"shared memory {path}")
    return left


def rebuilt(cluster: Cluster) -> int:
    count = 0
    for node in cluster.list_all_nodes() + cluster.removed_nodes:
        for log in glob.glob(os.path.join(node.logs_dir or "/nonexistent", "rayd-raylet*.log")):
            with open(log, errors="replace") as f:
                count += sum("rebuilding lost objects" in line for line in f)
    return count


def run(tasks: int, period_s: float, seed_value: int = 1) -> Dict[str, Any]:
    rng = random.Random(seed_value)
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE_ARGS, "num_redis_shards": 2, "_system_config": {"node_death_timeout_ms": DEATH_TIMEOUT_MS}})
    temp_dirs: List[str] = []
    try:
        for _ in range(2):
            cluster.add_node(**NODE_ARGS)
        cluster.connect()
        started = time.monotonic()
        baseline = workload(tasks, GET_DEADLINE_S)
        baseline_s = time.monotonic() - started
        faults = Faults(cluster, period_s, rng)
        faults.thread.start()
        started = time.monotonic()
        outcome = workload(tasks, GET_DEADLINE_S)
        elapsed = time.monotonic() - started
        faults.stop.set()
        faults.thread.join()
        outcome.update({
            "faults": faults.done, "fault_errors": faults.errors, "seconds": round(elapsed, 1),
            "seconds_lost": round(max(0.0, elapsed - baseline_s), 1), "rebuilt": rebuilt(cluster),
            "baseline_wrong": baseline["wrong"], "baseline_hangs": baseline["hangs"]})
        temp_dirs = [n.temp_dir for n in cluster.list_all_nodes() + cluster.removed_nodes]
    finally:
        keep = os.environ.get("RAYD_CHAOS_KEEP_LOGS")
        if keep:
            # For a post-mortem: every node's logs, before the cluster takes its dirs away.
            for i, node in enumerate(cluster.list_all_nodes() + cluster.removed_nodes):
                if node.logs_dir and os.path.isdir(node.logs_dir):
                    shutil.copytree(node.logs_dir, os.path.join(keep, f"node{i}"), dirs_exist_ok=True)
        cluster.shutdown()
        for node in cluster.removed_nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
    outcome["leftovers"] = leftovers(temp_dirs)
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--period", type=float, default=3.0, help="seconds between faults, on average")
    parser.add_argument("--out", help="write the summary (markdown) here too")
    args = parser.parse_args()
    outcome = run(args.tasks, args.period)
    ok = outcome["wrong"] == 0 and outcome["hangs"] == 0 and not outcome["leftovers"]
    summary = "\n".join([
        f"# Chaos run ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"- verdict: {'PASS' if ok else 'FAIL'}",
        f"- tasks submitted: {outcome['submitted']}, results checked right: {outcome['right']}",
        f"- wrong results: {outcome['wrong']}, hangs (ray.get past {GET_DEADLINE_S:.0f} s): {outcome['hangs']} {json.dumps(outcome['hung'])}",
        f"- documented errors by type: {json.dumps(outcome['errors'])}",
        f"- faults injected: {json.dumps(outcome['faults'])} (could not inject: {len(outcome['fault_errors'])})",
        f"- tasks re-run to rebuild lost objects: {outcome['rebuilt']}",
        f"- run time {outcome['seconds']} s, of which lost to faults ~{outcome['seconds_lost']} s "
        "(against the same workload's rate without faults)",
        f"- left after the cluster stopped: {outcome['leftovers'] or 'nothing'}",
    ])
    print(summary)
    if args.out:
        with open(args.out, "w") as f:
            f.write(summary + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
