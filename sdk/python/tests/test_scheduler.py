"""The raylet's scheduling rules seen from a driver: what the unit tests of the scheduler
core (daemons/raylet/src/scheduler/tests.rs) prove with scripted events, here once on
real processes."""

import os
import time

import numpy as np
import pytest

import ray


def test_a_queued_tasks_argument_pushed_out_of_the_store_comes_back(ray_start, tmp_path):
    """1 CPU, a 200 MB store, a task queued behind a busy CPU on a 30 MB `ray.put` array,
    then eight 30 MB puts that push the array out of memory: the task used to run on a
    missing object and its `ray.get` never returned. Now the array is spilled to disk and
    restored for the task. (Had it been dropped, the task would go back to waiting and
    raise ObjectLostError naming it: the scheduler's unit tests script that case.)"""
    ray_start(num_cpus=1, object_store_memory=200 * 10**6)

    release = tmp_path / "release"

    @ray.remote
    def busy(path):
        # Holds the only CPU until the test has pushed the array out.
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "done"

    @ray.remote
    def total(array):
        return int(array.sum())

    array = np.ones(30 * 10**6 // 8, dtype=np.int64)
    expected = int(array.sum())
    ref = ray.put(array)
    del array
    blocker = busy.remote(str(release))
    queued = total.remote(ref)
    fillers = [ray.put(np.zeros(30 * 10**6, dtype=np.uint8)) for _ in range(8)]
    ready, _ = ray.wait([queued], timeout=0.5)
    assert not ready, "the task ran before its argument was pushed out"
    release.touch()
    assert ray.get(blocker, timeout=60) == "done"
    assert ray.get(queued, timeout=60) == expected
    del fillers


@pytest.mark.parametrize("amount", [float("inf"), float("nan")])
def test_a_task_whose_resource_amount_is_not_a_number_raises_at_get(shared_cluster, amount):
    """The raylet refuses such a task; the submitter's get raises instead of waiting."""
    @ray.remote
    def f():
        return 1

    ref = f.options(resources={"Custom": amount}).remote()
    with pytest.raises(ray.exceptions.RaySystemError, match="not a finite, non-negative amount"):
        ray.get(ref, timeout=30)


def test_the_tasks_of_a_driver_that_died_are_cancelled(shared_cluster, tmp_path):
    """Another driver queues twenty 30 s tasks on the two CPUs and dies: its running tasks
    are stopped and its queued ones dropped, so this driver's tasks run at once (they
    used to wait behind all of them)."""
    from ray._private import worker as _worker
    from conftest import run_driver

    started = tmp_path / "started"
    started.mkdir()
    out = run_driver(_worker.global_worker.info["redis_address"], (
        "@ray.remote\n"
        "def slow(i):\n"
        f"    open(os.path.join({str(started)!r}, str(i)), 'w').close()\n"
        "    time.sleep(30)\n"
        "ids = [slow.remote(i) for i in range(20)]\n"
        "deadline = time.monotonic() + 30\n"
        f"while len(os.listdir({str(started)!r})) < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('submitted', len(os.listdir(" + repr(str(started)) + ")), flush=True)\n"
        "os._exit(1)\n"
    ))
    assert "submitted 2" in out.stdout, out.stdout + out.stderr

    @ray.remote
    def tiny(i):
        return i

    start = time.monotonic()
    assert ray.get([tiny.remote(i) for i in range(4)], timeout=20) == [0, 1, 2, 3]
    assert time.monotonic() - start < 15


def test_a_task_outlives_the_ten_seconds_of_an_idle_spawning_thread(ray_start, tmp_path):
    """Workers were started from tokio's blocking pool, whose threads end after 10 s without
    work, and a worker's parent-death signal fires when the thread that started it ends: a
    task running 10 s after the last worker start was killed and retried. It runs once."""
    ray_start(num_cpus=1)
    attempts = tmp_path / "attempts"

    @ray.remote
    def long_task(path):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(11)
        return os.getpid()

    pid = ray.get(long_task.remote(str(attempts)), timeout=60)
    assert attempts.read_text().split() == [str(pid)], "the task was killed and run again"
