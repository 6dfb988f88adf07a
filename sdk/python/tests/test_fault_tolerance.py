"""Fault tolerance on real processes: dead nodes detected, their tasks redone, lost objects
rebuilt from lineage, actors restarted on another node, and what cannot be rebuilt raising
`ObjectLostError` instead of hanging."""

import os
import signal
import sys
import time

import numpy as np
import pytest

import ray
from ray.cluster_utils import Cluster

# Short, so that tests are quick; the default is 5 s.
DEATH_TIMEOUT_MS = 1000
# Detection takes the timeout plus a reaper tick; this leaves room for a loaded machine.
DETECTION_DEADLINE_S = DEATH_TIMEOUT_MS / 1000 + 10


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "_system_config": {"node_death_timeout_ms": DEATH_TIMEOUT_MS}})
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def _runs(log: str) -> list:
    with open(log) as f:
        return f.read().split()


def _wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_an_evicted_task_result_is_rebuilt_by_running_its_task_again(tmp_path):
    # Spilling cannot work (its directory cannot be made): task results are evicted.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    log = str(tmp_path / "runs")
    os.environ["RAYD_OBJECT_SPILLING_DIRECTORY"] = str(blocker / "spill")
    try:
        ray.init(num_cpus=1, object_store_memory=200 * 10**6)
    finally:
        del os.environ["RAYD_OBJECT_SPILLING_DIRECTORY"]
    try:
        @ray.remote
        def make(i, log):
            with open(log, "a") as f:
                f.write(f"{i}\n")
            return np.full(40 * 10**6 // 8, i, dtype=np.int64)

        ids = [make.remote(i, log) for i in range(10)]
        for i, ref in enumerate(ids):
            assert ray.get(ref, timeout=60.0)[0] == i
        # ids[0] was evicted to make room for the later ones: its task runs again.
        again = ray.get(ids[0], timeout=60.0)
        assert again.shape == (5 * 10**6,) and again[0] == 0 and again[-1] == 0
        assert _runs(log).count("0") == 2, _runs(log)
    finally:
        ray.shutdown()


def test_a_killed_node_is_declared_dead_and_shown_so(cluster):
    node = cluster.add_node(num_cpus=1)
    cluster.connect()
    assert sum(n["Alive"] for n in ray.nodes()) == 2
    started = time.monotonic()
    cluster.kill_node(node)
    _wait_until(lambda: any(not n["Alive"] and n["NodeManagerAddress"] == node.address for n in ray.nodes()),
                DETECTION_DEADLINE_S, "the killed node to be dead in ray.nodes()")
    assert time.monotonic() - started >= DEATH_TIMEOUT_MS / 1000 * 0.9
    status = cluster.status()
    dead = [n for n in status["nodes"] if n["address"] == node.address]
    assert dead and not dead[0]["alive"], status


def test_a_paused_raylet_declared_dead_does_not_come_back_by_itself(cluster):
    """A partition that heals (here: a raylet stopped past the timeout, then continued) does
    not resurrect its node: the raylet learns it was declared dead and exits."""
    node = cluster.add_node(num_cpus=1)
    cluster.connect()
    [raylet] = [pid for name, pid in node.processes if name == "rayd-raylet"]
    [store] = [pid for name, pid in node.processes if name == "rayd-plasma"]
    os.kill(raylet, signal.SIGSTOP)
    try:
        _wait_until(lambda: any(not n["Alive"] and n["NodeManagerAddress"] == node.address
                                for n in ray.nodes()), DETECTION_DEADLINE_S, "the paused node to be dead")
    finally:
        os.kill(raylet, signal.SIGCONT)
    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z"
        except OSError:
            return True

    # The raylet exits, and stops its store: restarted, they would be a new node.
    _wait_until(lambda: gone(raylet) and gone(store), DETECTION_DEADLINE_S,
                "the continued raylet and its store to exit")
    assert not any(n["Alive"] and n["NodeManagerAddress"] == node.address for n in ray.nodes())
    cluster.kill_node(node)


def test_objects_and_tasks_of_a_killed_node_are_rebuilt_on_a_new_node(cluster, tmp_path):
    node = cluster.add_node(num_cpus=1, resources={"B": 1})
    cluster.connect()
    log = str(tmp_path / "runs")

    @ray.remote(resources={"B": 1}, max_retries=2)
    def big(i, log):
        with open(log, "a") as f:
            f.write(f"{i}\n")
        return np.full(10 * 10**6 // 8, i, dtype=np.int64)

    @ray.remote(resources={"B": 1}, max_retries=2)
    def slow(log):
        with open(log, "a") as f:
            f.write("slow\n")
        time.sleep(3)
        return "slow done"

    @ray.remote(resources={"B": 1})
    def produce(log):
        # Submitted from the B node, whose store alone keeps their results.
        return [big.remote(i, log) for i in range(3)]

    made = ray.get(produce.remote(log), timeout=60.0)
    _wait_until(lambda: os.path.exists(log) and len(_runs(log)) == 3, 60, "the three tasks to run")
    running = slow.remote(log)
    _wait_until(lambda: "slow" in _runs(log), 30, "the slow task to start on the B node")
    # The objects live only in the B node's store; the slow task runs there.
    cluster.kill_node(node)
    cluster.add_node(num_cpus=1, resources={"B": 1})
    values = ray.get(made, timeout=60.0)
    assert [int(v[0]) for v in values] == [0, 1, 2]
    assert ray.get(running, timeout=60.0) == "slow done"
    runs = _runs(log)
    assert sorted(r for r in runs if r != "slow") == ["0", "0", "1", "1", "2", "2"], runs
    assert runs.count("slow") == 2, runs


def test_an_actor_whose_node_dies_is_restarted_on_another_node(cluster):
    first = cluster.add_node(num_cpus=1, resources={"R": 1})
    cluster.connect()

    @ray.remote(resources={"R": 1}, max_restarts=1)
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n, os.getpid()

    counter = Counter.remote()
    assert ray.get(counter.incr.remote(), timeout=60.0)[0] == 1
    n, pid = ray.get(counter.incr.remote(), timeout=60.0)
    assert n == 2 and pid in first.all_pids()
    second = cluster.add_node(num_cpus=1, resources={"R": 1})
    cluster.kill_node(first)
    # Calls made while it restarts wait for it; the constructor ran again.
    n, pid = ray.get(counter.incr.remote(), timeout=60.0)
    assert n == 1 and pid in second.all_pids()
    assert ray.get(counter.incr.remote(), timeout=60.0)[0] == 2
    # No restarts left: when its node dies too, calls fail instead of hanging.
    cluster.kill_node(second)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(counter.incr.remote(), timeout=60.0)


def test_a_put_lost_with_its_node_raises_object_lost_error(cluster):
    node = cluster.add_node(num_cpus=1, resources={"B": 1})
    cluster.connect()

    @ray.remote(resources={"B": 1})
    def put_there():
        return [ray.put(np.ones(10 * 10**6 // 8))]

    [ref] = ray.get(put_there.remote(), timeout=60.0)
    cluster.kill_node(node)
    started = time.monotonic()
    with pytest.raises(ray.exceptions.ObjectLostError) as raised:
        ray.get(ref, timeout=60.0)
    assert time.monotonic() - started < DETECTION_DEADLINE_S
    assert ref.hex() in str(raised.value)


def test_a_short_chaos_run_gets_every_result_right_and_leaves_nothing():
    """`make chaos`, shortened for CI: faults every second or so over ~1,000 tasks."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts"))
    try:
        import chaos
    finally:
        sys.path.pop(0)
    outcome = chaos.run(tasks=1000, period_s=1.0)
    assert sum(outcome["faults"].values()) >= 3, outcome
    assert outcome["wrong"] == 0 and outcome["hangs"] == 0, outcome
    assert outcome["leftovers"] == [], outcome
    assert outcome["right"] > 0, outcome
