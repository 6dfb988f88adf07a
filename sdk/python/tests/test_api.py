"""The Python API of API.md: start and attach, tasks, objects, errors."""

import os
import pickle
import signal
import time

import numpy as np
import pytest

import ray
from ray import exceptions

from conftest import run_driver, wait_for


# ---- start and attach ----

def test_init_returns_address_information(ray_start):
    worker = ray_start(num_cpus=1)
    info = worker.info
    assert info["redis_address"].startswith("127.0.0.1:")
    assert info["node_ip_address"] == "127.0.0.1"
    assert os.path.exists(info["raylet_socket_name"])
    assert os.path.exists(info["object_store_address"])
    assert ray.is_initialized()


def test_a_second_init_raises_unless_told_to_ignore(shared_cluster):
    with pytest.raises(RuntimeError, match="called twice"):
        ray.init()
    assert ray.init(ignore_reinit_error=True)["redis_address"]


def test_shutdown_is_safe_twice_and_forgets_functions(cleanup):
    ray.init(num_cpus=1)

    @ray.remote
    def f():
        return 1

    assert ray.get(f.remote()) == 1
    ray.shutdown()
    ray.shutdown()
    assert not ray.is_initialized()
    with pytest.raises(exceptions.RaySystemError, match="ray.init"):
        f.remote()
    ray.init(num_cpus=1)
    assert ray.get(f.remote()) == 1


def test_attaching_with_node_settings_is_an_error(cleanup):
    with pytest.raises(ValueError, match="num_cpus"):
        ray.init(redis_address="127.0.0.1:1", num_cpus=2)


def test_a_second_driver_attaches_and_shares_objects(shared_cluster):
    address = ray._private.worker.global_worker.info["redis_address"]
    object_id = ray.put("from the first driver")
    out = run_driver(address, (
        "@ray.remote\n"
        "def f(x):\n    return x * 2\n"
        f"print(ray.get(ray.ObjectID(bytes.fromhex({object_id.hex()!r}))))\n"
        "print(ray.get(f.remote(21)))\n"
    ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["from the first driver", "42"]


def test_small_results_reach_whoever_asks_for_them(shared_cluster):
    """Small results travel in the raylet's messages, not plasma: a task given their IDs
    inside a list, and another driver, still get them."""
    @ray.remote
    def small(i):
        return i

    @ray.remote
    def total(ids):
        return sum(ray.get(ids))

    ids = [small.remote(i) for i in range(20)]
    assert ray.get(total.remote(ids)) == sum(range(20))
    assert ray.get(ids) == list(range(20))
    later = small.remote(7)
    assert ray.get(later) == 7
    address = ray._private.worker.global_worker.info["redis_address"]
    out = run_driver(
        address, f"print(ray.get(ray.ObjectID(bytes.fromhex({later.hex()!r})), timeout=30))\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "7"


def test_small_results_beyond_the_raylets_memory_go_to_plasma(shared_cluster):
    """The raylet keeps 64 MiB of small results and the driver caches 64 MiB: past that the
    oldest are in plasma, and every one of them can still be read."""
    @ray.remote
    def blob(i):
        return bytes([i % 256]) * 90_000

    ids = [blob.remote(i) for i in range(900)]
    ray.wait(ids, num_returns=len(ids), timeout=120)
    for i, value in enumerate(ray.get(ids, timeout=120)):
        assert len(value) == 90_000 and value[0] == i % 256

    @ray.remote
    def first_byte(value):
        return value[0]

    # The oldest, now in plasma, as a dependency of a task.
    assert ray.get(first_byte.remote(ids[0]), timeout=60) == 0


def test_local_mode_runs_tasks_in_the_driver(cleanup):
    ray.init(driver_mode=ray.LOCAL_MODE)

    @ray.remote
    def pid():
        return os.getpid()

    @ray.remote(num_returns=2)
    def two(x):
        return x, x + 1

    @ray.remote
    def fail():
        raise KeyError("local")

    assert ray.get(pid.remote()) == os.getpid()
    a, b = two.remote(ray.put(1))
    assert ray.get([a, b]) == [1, 2]
    with pytest.raises(KeyError):
        ray.get(fail.remote())
    ready, not_ready = ray.wait([a, b], num_returns=1)
    assert (ready, not_ready) == ([a], [b])


# ---- tasks ----

def test_calling_a_remote_function_directly_is_an_error(shared_cluster):
    @ray.remote
    def f():
        return 1

    with pytest.raises(TypeError, match=r"f\.remote"):
        f()


def test_options_keyword_arguments_and_containers(shared_cluster):
    @ray.remote
    def f(a, b=10, *, c=100):
        return a + b + c

    @ray.remote
    def inner_ids(values):
        return [isinstance(v, ray.ObjectID) for v in values]

    assert ray.get(f.remote(1)) == 111
    assert ray.get(f.remote(1, c=ray.put(1000), b=ray.put(0))) == 1001
    assert ray.get(f.options(num_returns=1, num_cpus=0.5).remote(1, 2)) == 103
    # IDs nested in a container are passed as IDs, not values.
    assert ray.get(inner_ids.remote([ray.put(1), 2])) == [True, False]


def test_invalid_options_are_refused(shared_cluster):
    with pytest.raises(ValueError, match="num_cpus"):
        ray.remote(num_cpus=-1)(lambda: 1)
    with pytest.raises(ValueError, match="unknown"):
        ray.remote(num_cpu=1)(lambda: 1)


def test_max_calls_replaces_the_worker(shared_cluster):
    @ray.remote(max_calls=1)
    def pid():
        return os.getpid()

    pids = [ray.get(pid.remote()) for _ in range(4)]
    assert len(set(pids)) == 4


def test_nested_tasks_deeper_than_the_cpus_finish(shared_cluster):
    @ray.remote
    def depth(n):
        if n == 0:
            return 0
        return 1 + ray.get(depth.remote(n - 1))

    assert ray.get(depth.remote(6), timeout=120) == 6


def test_a_task_sent_ahead_never_waits_behind_a_blocked_one(ray_start, monkeypatch):
    """A busy worker running a short task gets the next queued task of its shape ahead of
    time. Here that is the child its parent then waits for (the other CPU is taken, so the
    child cannot run elsewhere): the worker must give it back when the parent blocks."""
    # Every task counts as short, whatever this machine's speed: the child always goes ahead.
    monkeypatch.setenv("RAYD_TASK_AHEAD_MAX_MS", "600000")
    ray_start(num_cpus=2)
    @ray.remote
    def child():
        return 1

    @ray.remote
    def parent(how):
        if how == "get":
            return ray.get(child.remote()) + 1
        if how == "wait":
            ready, _ = ray.wait([child.remote()], num_returns=1)
            return ray.get(ready[0]) + 1
        return 0

    @ray.remote
    def long():
        time.sleep(2)

    # The raylet learns that `parent` is short, so it sends tasks ahead behind it.
    ray.get([parent.remote(None) for _ in range(20)])
    for how in ("get", "wait"):
        busy = long.remote()
        assert ray.get(parent.remote(how), timeout=30) == 2
        ray.get(busy)


def test_ten_thousand_tasks_complete(shared_cluster):
    @ray.remote
    def inc(x):
        return x + 1

    ids = [inc.remote(i) for i in range(10_000)]
    assert ray.get(ids, timeout=300) == list(range(1, 10_001))


def test_a_worker_killed_mid_task_is_retried(shared_cluster, tmp_path):
    marker = tmp_path / "attempted"

    @ray.remote(max_retries=1)
    def die_once():
        if not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
        return "second attempt"

    assert ray.get(die_once.remote(), timeout=60) == "second attempt"


def test_a_worker_killed_without_retries_gives_a_worker_error(shared_cluster):
    @ray.remote(max_retries=0)
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(exceptions.RayWorkerError, match="died"):
        ray.get(die.remote(), timeout=60)


# ---- objects ----

def test_put_and_get_values(shared_cluster):
    values = [1, 2.5, "text", b"bytes", None, [1, {"a": (2, 3)}], {1, 2}, lambda x: x + 1]
    ids = [ray.put(v) for v in values]
    got = ray.get(ids)
    assert got[:-1] == values[:-1]
    assert got[-1](1) == 2
    assert ray.get(ids[0]) == 1


def test_get_timeout(shared_cluster):
    @ray.remote
    def slow():
        time.sleep(5)

    start = time.time()
    with pytest.raises(exceptions.GetTimeoutError):
        ray.get(slow.remote(), timeout=0.2)
    assert time.time() - start < 3
    with pytest.raises(TypeError):
        ray.get(1)
    with pytest.raises(TypeError, match="put of an ObjectID"):
        ray.put(ray.put(1))


def test_object_ids_are_hashable_printable_and_picklable(shared_cluster):
    a = ray.put(1)
    assert repr(a) == f"ObjectID({a.hex()})"
    assert len(a.hex()) == 40
    assert {a: 1}[pickle.loads(pickle.dumps(a))] == 1
    assert ray.ObjectRef is ray.ObjectID


def test_numpy_results_are_read_only_views_of_shared_memory(shared_cluster):
    array = np.arange(1_000_000, dtype=np.float64)
    object_id = ray.put(array)
    first, second = ray.get(object_id), ray.get(object_id)
    np.testing.assert_array_equal(first, array)
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0] = 1
    assert np.shares_memory(first, second), "two gets should map the same shared memory"

    @ray.remote
    def make():
        return np.ones(100_000)

    result = ray.get(make.remote())
    assert result.sum() == 100_000 and not result.flags.writeable


def test_a_task_takes_a_100mb_argument_by_id(shared_cluster):
    big = np.ones(100 * 1024 * 1024 // 8)

    @ray.remote
    def total(x):
        return float(x.sum()), x.flags.writeable

    assert ray.get(total.remote(ray.put(big)), timeout=120) == (float(len(big)), False)
    # A large value passed directly goes through the store too.
    assert ray.get(total.remote(big), timeout=120)[0] == float(len(big))


def test_wait(shared_cluster):
    @ray.remote
    def sleep_then(seconds, value):
        time.sleep(seconds)
        return value

    fast = [sleep_then.remote(0, i) for i in range(3)]
    slow = sleep_then.remote(30, "late")
    ids = [fast[0], slow, fast[1], fast[2]]
    ready, not_ready = ray.wait(ids, num_returns=3, timeout=20.0)
    assert ready == [fast[0], fast[1], fast[2]]
    assert not_ready == [slow]
    ready, not_ready = ray.wait(ids, num_returns=1)
    assert ready == [fast[0]] and not_ready == [slow, fast[1], fast[2]]
    # An int timeout is milliseconds (the seed's API), a float is seconds (current Ray's).
    start = time.time()
    ready, not_ready = ray.wait([slow], timeout=100)
    assert (ready, not_ready) == ([], [slow])
    assert time.time() - start < 5
    start = time.time()
    ray.wait([slow], timeout=0.1)
    assert time.time() - start < 5
    with pytest.raises(ValueError, match="unique"):
        ray.wait([fast[0], fast[0]])
    with pytest.raises(ValueError, match="num_returns"):
        ray.wait(fast, num_returns=4)


def test_object_id_seed_makes_ids_deterministic(cleanup):
    ids = []
    for _ in range(2):
        ray.init(num_cpus=1, object_id_seed=42)
        ids.append([ray.put(i).hex() for i in range(3)])
        ray.shutdown()
    assert ids[0] == ids[1]


# ---- errors ----

def test_a_task_error_is_raised_with_the_remote_traceback(shared_cluster):
    @ray.remote
    def divide(a, b):
        return a / b

    with pytest.raises(exceptions.RayTaskError) as info:
        ray.get(divide.remote(1, 0))
    error = info.value
    assert isinstance(error, ZeroDivisionError)
    assert "divide" in str(error) and "ZeroDivisionError" in str(error)
    assert "in divide" in error.traceback_str
    assert "worker_main" not in error.traceback_str

    @ray.remote
    def add_one(x):
        return x + 1

    # The error flows through a dependency.
    with pytest.raises(ZeroDivisionError):
        ray.get(add_one.remote(divide.remote(1, 0)))


def test_wrong_number_of_returns_is_a_task_error(shared_cluster):
    @ray.remote(num_returns=2)
    def one():
        return (1,)

    a, b = one.remote()
    with pytest.raises(exceptions.RayTaskError, match="num_returns"):
        ray.get(a)


def test_a_node_started_on_a_thread_outlives_the_thread(cleanup):
    """ray.init() on a thread that then ends (a thread pool's, say): the node lives as long
    as the driver. Its daemons' parent-death signal fired when the thread that started
    them ended, which stopped the node under the running driver."""
    import threading

    from conftest import _alive
    from ray._private import worker as _worker

    thread = threading.Thread(target=lambda: ray.init(num_cpus=1))
    thread.start()
    thread.join()
    pids = _worker.global_worker.node.pids()
    assert pids
    # Watched for a second: a stopping node would be gone well within it.
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        assert all(_alive(p) for p in pids), "a daemon of the node ended with the thread"
        time.sleep(0.02)

    @ray.remote
    def one():
        return 1

    assert ray.get(one.remote(), timeout=30) == 1
