"""The raylet's scheduling rules seen from a driver: what the unit tests of the scheduler
core (daemons/raylet/src/scheduler/tests.rs) prove with scripted events, here once on
real processes."""

import time

import numpy as np
import pytest

import ray


def test_a_queued_tasks_argument_evicted_from_the_store_raises_no_hang(ray_start):
    """1 CPU, a 200 MB store, a task queued behind a busy CPU on a 30 MB `ray.put` array,
    then eight 30 MB puts that push the array out of the store (large objects share one
    LRU list): the task must not run on a missing object and wait forever (it did). It
    either gets the array back (a copy elsewhere, spilled) or raises ObjectLostError
    naming it; either way within the deadline."""
    ray_start(num_cpus=1, object_store_memory=200 * 10**6)

    @ray.remote
    def busy(seconds):
        time.sleep(seconds)
        return "done"

    @ray.remote
    def total(array):
        return int(array.sum())

    array = np.ones(30 * 10**6 // 8, dtype=np.int64)
    expected = int(array.sum())
    ref = ray.put(array)
    del array
    blocker = busy.remote(2)
    queued = total.remote(ref)
    fillers = [ray.put(np.zeros(30 * 10**6, dtype=np.uint8)) for _ in range(8)]
    assert ray.get(blocker, timeout=60) == "done"
    try:
        assert ray.get(queued, timeout=60) == expected
    except ray.exceptions.ObjectLostError as error:
        assert ref.hex() in str(error)
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
