"""The rest of Ray 0.5's Python API (August 2018), beside today's spellings."""

import json
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ray
import ray.experimental
from conftest import rayd_node, run_driver, wait_for
from ray.scripts.scripts import translate


def _explode():
    raise RuntimeError("this value cannot be loaded in a worker")


class _LoadsNowhere:
    """Pickles fine; unpickling raises (as a function whose module a worker lacks does)."""

    def __reduce__(self):
        return (_explode, ())


# ray.error_info()

def test_error_info_lists_failed_tasks_with_type_message_and_time(ray_start):
    ray_start()
    before = time.time()

    @ray.remote
    def fails():
        raise ValueError("boom")

    with pytest.raises(ValueError):
        ray.get(fails.remote())
    errors = ray.error_info()
    assert len(errors) == 1, errors
    assert errors[0]["type"] == "task"
    assert "fails" in errors[0]["message"] and "ValueError: boom" in errors[0]["message"]
    assert before - 1 <= errors[0]["timestamp"] <= time.time() + 1


def test_error_info_lists_functions_that_cannot_be_pickled_or_loaded(ray_start):
    ray_start()
    lock = threading.Lock()
    poison = _LoadsNowhere()

    @ray.remote
    def uses_a_lock():
        return lock

    @ray.remote
    def cannot_load():
        return poison

    with pytest.raises(TypeError, match="cannot pickle"):
        uses_a_lock.remote()
    with pytest.raises(RuntimeError):
        ray.get(cannot_load.remote())
    kinds = [e["type"] for e in ray.error_info()]
    assert "pickle" in kinds and "import" in kinds, ray.error_info()
    load_error = next(e for e in ray.error_info() if e["type"] == "import")
    assert "cannot_load" in load_error["message"], load_error


def test_error_info_warns_of_a_function_too_large(ray_start):
    ray_start()
    big = b"x" * (11 * 2**20)

    @ray.remote
    def large():
        return len(big)

    with pytest.warns(UserWarning, match="MiB pickled"):
        assert ray.get(large.remote()) == len(big)
    assert [e["type"] for e in ray.error_info()] == ["function_too_large"]


# ray.global_state, ray.timeline, ray.profile

def test_global_state_tables(ray_start):
    ray_start(num_cpus=2)

    @ray.remote
    def square(x):
        return x * x

    ids = [square.remote(i) for i in range(3)]
    assert ray.get(ids) == [0, 1, 4]
    big = ray.put(np.zeros(2**20, dtype=np.uint8))
    state = ray.global_state

    clients = state.client_table()
    assert len(clients) == 1 and clients[0]["Alive"]
    assert state.cluster_resources()["CPU"] == 2
    assert "CPU" in state.available_resources()

    functions = state.function_table()
    assert any(f["Name"].endswith("square") for f in functions.values()), functions

    def tasks_recorded():
        table = state.task_table()
        mine = [t for t in table.values() if t.get("FunctionName", "").endswith("square")]
        return mine if len(mine) == 3 and all("EndTime" in t for t in mine) else None

    tasks = wait_for(tasks_recorded, 10, "the three tasks in the task table")
    for task in tasks:
        assert task["State"] == "finished"
        assert task["SubmitTime"] <= task["StartTime"] <= task["EndTime"]
    one = ids[0].task_id().hex()
    assert state.task_table(one)["TaskID"] == one

    objects = wait_for(lambda: state.object_table(big), 10, "the put object in the object table")
    assert objects["DataSize"] >= 2**20
    assert objects["Locations"] == [clients[0]["NodeID"]]

    workers = state.workers()
    kinds = sorted(w["kind"] for w in workers.values())
    assert "driver" in kinds and "worker" in kinds, workers
    assert all(w["node_ip_address"] == "127.0.0.1" for w in workers.values())

    logs = state.log_files()
    assert any(path.endswith("rayd-raylet.log") for path in logs["127.0.0.1"]), logs


def test_chrome_tracing_dump_and_timeline_show_tasks_and_profile_spans(ray_start, tmp_path):
    ray_start(num_cpus=2)

    @ray.remote
    def traced(i):
        with ray.profile("inner_step", extra_data={"i": i}):
            return i

    with ray.profile("driver_step", extra_data={"where": "driver"}):
        assert ray.get([traced.remote(i) for i in range(4)]) == [0, 1, 2, 3]

    def complete():
        trace = ray.timeline()
        tasks = [e for e in trace if e["cat"] == "task" and e["name"].endswith("traced")]
        spans = [e for e in trace if e["cat"] == "inner_step"]
        mine = [e for e in trace if e["cat"] == "driver_step"]
        return (trace, tasks, spans, mine) if len(tasks) == 4 and len(spans) == 4 and mine else None

    trace, tasks, spans, mine = wait_for(complete, 10, "the tasks and spans on the timeline")
    assert all(e["ph"] == "X" and e["dur"] >= 0 and e["pid"] == "Node 127.0.0.1" for e in tasks)
    assert all(e["tid"].startswith("worker:") for e in tasks)
    assert sorted(e["args"]["i"] for e in spans) == [0, 1, 2, 3]
    assert mine[0]["args"] == {"where": "driver"} and mine[0]["tid"] == f"driver:{os.getpid()}"
    submits = [e for e in trace if e["cat"] == "task:submit" and e["name"].endswith("traced")]
    assert len(submits) == 4 and all(e["ph"] == "i" for e in submits)

    path = tmp_path / "trace.json"
    assert ray.global_state.chrome_tracing_dump(str(path)) is None
    dumped = json.loads(path.read_text())
    assert len([e for e in dumped if e["cat"] == "task" and e["name"].endswith("traced")]) == 4


def test_the_timeline_is_one_list_per_job_capped_at_its_last_events(shared_cluster, monkeypatch):
    from ray._private import gcs, profiling
    monkeypatch.setattr(profiling, "MAX_EVENTS", 5)
    for i in range(20):
        with ray.profile("capped_step", extra_data={"i": i}):
            pass
    profiling.flush()
    job_key = f"rayd:profile:{ray._private.worker.global_worker.core.job_id.hex()}".encode()
    assert gcs.command("LLEN", job_key) <= 5
    kept = [r["extra_data"]["i"] for r in profiling.events() if r["event_type"] == "capped_step"]
    assert kept and kept == list(range(20 - len(kept), 20)), kept


# ray.register_custom_serializer

class Unpicklable:
    def __init__(self, value):
        self.value = value
        self.lock = threading.Lock()


def test_custom_serializer_for_a_class_pickle_refuses(ray_start):
    ray_start()
    with pytest.raises(TypeError):
        pickle.dumps(Unpicklable(1))
    ray.register_custom_serializer(Unpicklable, serializer=lambda obj: obj.value,
                                   deserializer=lambda value: Unpicklable(value))

    @ray.remote
    def bump(obj):
        return Unpicklable(obj.value + 1)

    @ray.remote
    def make(value):
        return Unpicklable(value)

    assert ray.get(ray.put(Unpicklable(5))).value == 5
    assert ray.get(bump.remote(Unpicklable(1))).value == 2
    # A worker that never received an instance makes one: registered for the job at its start.
    assert ray.get(make.remote(7)).value == 7


class UnpicklableLater(Unpicklable):
    pass


def test_a_serializer_registered_after_a_worker_entered_the_job_reaches_it(ray_start):
    ray_start(num_cpus=1)

    @ray.remote
    def pid():
        return os.getpid()

    @ray.remote
    def make(value):
        return os.getpid(), UnpicklableLater(value)

    first = ray.get(pid.remote())  # the worker has entered the job: serializers loaded
    ray.register_custom_serializer(UnpicklableLater, serializer=lambda obj: obj.value,
                                   deserializer=lambda value: UnpicklableLater(value))
    second, made = ray.get(make.remote(7), timeout=60)
    assert second == first, "the same worker"
    assert made.value == 7


def test_custom_serializer_by_dict_and_by_pickle(ray_start):
    ray_start()

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y
            self.count_init = 1

    ray.register_custom_serializer(Point, use_dict=True)

    @ray.remote
    def norm(p):
        return (p.x, p.y, p.count_init)

    assert ray.get(norm.remote(Point(3, 4))) == (3, 4, 1)
    ray.register_custom_serializer(Point, use_pickle=True)
    assert ray.get(ray.put(Point(1, 2))).y == 2
    with pytest.raises(ValueError, match="exactly one"):
        ray.register_custom_serializer(Point, use_pickle=True, use_dict=True)


# ray.experimental: get and wait on containers, named actors

def test_experimental_get_and_wait_on_dicts_tuples_and_iterables(shared_cluster):
    a, b = ray.put(1), ray.put(2)
    assert ray.experimental.get({"a": a, "b": b, "c": 3}) == {"a": 1, "b": 2, "c": 3}
    assert ray.experimental.get((a, b)) == (1, 2)
    assert ray.experimental.get(x for x in [a, b]) == [1, 2]
    assert ray.experimental.get(a) == 1
    ready, not_ready = ray.experimental.wait({"a": a, "b": b}, num_returns=2, timeout=10.0)
    assert ready == [a, b] and not_ready == []
    assert ray.experimental.wait((a,)) == ([a], [])


def test_experimental_wait_on_a_single_id_raises_ray_waits_type_error(shared_cluster):
    with pytest.raises(TypeError, match="not a single one"):
        ray.experimental.wait(ray.put(1))


def test_a_failing_error_push_does_not_hide_a_pickling_error(shared_cluster, monkeypatch):
    from ray._private import gcs

    def push_fails(*args, **kwargs):
        raise ray.exceptions.RaySystemError("gcs: connection refused")

    monkeypatch.setattr(gcs, "push_error", push_fails)
    lock = threading.Lock()

    @ray.remote
    def uses_a_lock():
        return lock

    with pytest.raises(TypeError, match="cannot pickle"):
        uses_a_lock.remote()


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def increment(self):
        self.n += 1
        return self.n


def test_named_actors_are_found_from_another_driver(ray_start):
    worker = ray_start()
    counter = Counter.remote()
    ray.experimental.register_actor("counter", counter)
    assert ray.get(counter.increment.remote()) == 1
    with pytest.raises(ValueError, match="already taken"):
        ray.experimental.register_actor("counter", counter)
    with pytest.raises(ValueError, match="no actor is named"):
        ray.experimental.get_actor("nobody")
    out = run_driver(worker.info["redis_address"],
                     "import ray.experimental\n"
                     "c = ray.experimental.get_actor('counter')\n"
                     "print(ray.get(c.increment.remote()))\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "2"
    assert ray.get(ray.experimental.get_actor("counter").increment.remote()) == 3


def test_todays_name_option_and_get_actor(shared_cluster):
    Counter.options(name="today").remote()
    handle = ray.get_actor("today")
    # The name keeps the actor alive though its creation handle was dropped at once.
    assert ray.get(handle.increment.remote()) == 1
    with pytest.raises(ValueError, match="already taken"):
        Counter.options(name="today").remote()


def _actor_state(actor_id):
    from ray._private import gcs
    return gcs.command("HGET", f"rayd:actor:{actor_id.hex()}".encode(), b"state", shard=actor_id)


def _actor_holds(actor_id):
    from ray._private import gcs
    raw = gcs.command("GET", f"rayd:actor_holds:{actor_id.hex()}".encode(), shard=actor_id)
    return int(raw or 0)


def test_a_taken_name_takes_no_hold_and_a_lost_race_kills_the_new_actor(shared_cluster, monkeypatch):
    from ray.experimental import named_actors
    Counter.options(name="race").remote()
    other = Counter.remote()
    ray.get(other.increment.remote())
    before = _actor_holds(other._actor_id)
    with pytest.raises(ValueError, match="already taken"):
        ray.experimental.register_actor("race", other)
    assert _actor_holds(other._actor_id) == before
    # Another driver claims the name between check_free and register_actor.
    made = []
    register = named_actors.register_actor

    def late_register(name, handle):
        made.append(handle._actor_id)
        return register(name, handle)

    monkeypatch.setattr(named_actors, "check_free", lambda name: None)
    monkeypatch.setattr(named_actors, "register_actor", late_register)
    with pytest.raises(ValueError, match="already taken"):
        Counter.options(name="race").remote()
    assert wait_for(lambda: _actor_state(made[0]) == b"dead", timeout=30), _actor_state(made[0])


def test_a_dead_actors_name_is_free_again(shared_cluster):
    first = Counter.options(name="reborn").remote()
    assert ray.get(first.increment.remote()) == 1
    ray.kill(first)
    assert wait_for(lambda: _actor_state(first._actor_id) == b"dead", timeout=30)
    with pytest.raises(ValueError, match="no actor is named"):
        ray.get_actor("reborn")
    second = Counter.options(name="reborn").remote()
    assert ray.get(ray.get_actor("reborn").increment.remote()) == 1
    assert ray.get(second.increment.remote()) == 2


def test_free_drops_an_object_from_the_store(shared_cluster):
    from ray._private import internal_api
    object_id = ray.put(np.ones(2**20, dtype=np.uint8))
    assert ray.wait([object_id], timeout=0)[0] == [object_id]
    ray.internal.free([object_id])
    # Gone from the store: asked for again, it raises Ray's error for a freed object,
    # which is an ObjectLostError too.
    with pytest.raises(ray.exceptions.ObjectFreedError) as raised:
        ray.get(object_id, timeout=30)
    assert isinstance(raised.value, ray.exceptions.ObjectLostError)
    assert "freed" in str(raised.value)
    assert ray.internal.free is internal_api.free
    with pytest.raises(TypeError):
        ray.internal.free(["not an id"])


def test_get_webui_url_is_none_without_a_dashboard(shared_cluster):
    assert ray.get_webui_url() is None


def test_connect_and_disconnect(cleanup):
    with rayd_node() as (port, _, _):
        ray.connect(f"127.0.0.1:{port}")
        info = ray.global_state.client_table()
        assert len(info) == 1

        @ray.remote
        def f():
            return 2

        assert ray.get(f.remote(), timeout=60) == 2
        ray.disconnect()
        assert not ray.is_initialized()
        ray.connect({"redis_address": f"127.0.0.1:{port}"})
        assert ray.get(f.remote(), timeout=60) == 2
        ray.disconnect()


# LOCAL_MODE: the spelling chooses the semantics

def test_driver_mode_local_mode_is_ray_05s(cleanup):
    ray.init(driver_mode=ray.LOCAL_MODE)

    @ray.remote
    def add(a, b):
        return a + b

    @ray.remote(num_return_vals=2)
    def pair():
        return 1, 2

    @ray.remote
    def fails():
        raise KeyError("now")

    assert add.remote(1, 2) == 3
    assert pair.remote() == (1, 2)
    assert ray.get(5) == 5 and ray.get([1, 2]) == [1, 2]
    value = [1]
    assert ray.put(value) is value
    with pytest.raises(KeyError):
        fails.remote()
    counter = Counter.remote()
    assert counter.increment.remote() == 1
    assert ray.wait([1, 2], num_returns=1) == ([1], [2])


def test_local_mode_true_is_todays(cleanup):
    ray.init(local_mode=True)

    @ray.remote
    def add(a, b):
        return a + b

    ref = add.remote(1, 2)
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref) == 3


# The `ray` command

def test_ray_command_line_translates_to_rayd():
    args, env, warnings = translate(["start", "--head", "--redis-port", "6379", "--num-redis-shards", "2",
                                     "--redis-shard-ports", "7001,7002", "--redis-max-clients", "100",
                                     "--num-cpus", "4", "--no-ui", "--use-raylet"])
    assert args == ["start", "--head", "--redis-port", "6379", "--num-redis-shards", "2", "--num-cpus", "4"]
    assert env == {"RAYD_REDIS_SHARD_PORTS": "7001,7002", "RAYD_REDIS_MAX_CLIENTS": "100"}
    assert len(warnings) == 2
    assert translate(["start", "--redis-address", "10.0.0.1:6379"])[0] == [
        "start", "--redis-address", "10.0.0.1:6379"]
    assert translate(["stop"]) == (["stop"], {}, [])
    assert translate(["start", "--head", "--include-webui"]) == (["start", "--head", "--include-webui"], {}, [])


def test_ray_start_and_stop_run_a_node(cleanup):
    ray_command = os.path.join(os.path.dirname(sys.executable), "ray")
    shard_port = __import__("conftest")._free_port()
    with rayd_node("--redis-shard-ports", str(shard_port), "--redis-max-clients", "200", "--no-ui",
                   command=(ray_command,)) as (port, started, _):
        assert "started a rayd head node" in started.stdout
        ray.init(redis_address=f"127.0.0.1:{port}")
        shards = ray._private.gcs.command("LRANGE", "rayd:shards", 0, -1)
        assert shards == [f"127.0.0.1:{shard_port}".encode()]
        assert ray._private.gcs.command("CONFIG", "GET", "maxclients") == [b"maxclients", b"200"]
        ray.shutdown()
    out = subprocess.run([ray_command, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "start" in out.stdout


# Actor checkpointing (Ray 0.5's experimental API)

def _restarted(actor, old_pid):
    try:
        return ray.get(actor.pid.remote(), timeout=30) != old_pid
    except ray.exceptions.RayActorError:
        return False  # a call that raced with the death

def test_a_restarted_actor_comes_back_from_its_checkpoint(ray_start):
    ray_start(num_cpus=2)

    @ray.remote(max_reconstructions=1, checkpoint_interval=2)
    class Accumulator:
        def __init__(self):
            self.total = 0

        def add(self, x):
            self.total += x
            return self.total

        def pid(self):
            return os.getpid()

        def __ray_save__(self):
            return {"total": self.total}

        def __ray_restore__(self, checkpoint):
            self.total = checkpoint["total"]

    acc = Accumulator.remote()
    assert ray.get([acc.add.remote(1), acc.add.remote(2)]) == [1, 3]  # checkpointed here
    pid = ray.get(acc.pid.remote())
    os.kill(pid, 9)
    wait_for(lambda: _restarted(acc, pid), 30, "the restarted actor to answer")
    # Restarted from the checkpoint (total 3), not from the constructor (total 0).
    assert ray.get(acc.add.remote(10), timeout=60) == 13


def test_a_failing_checkpoint_does_not_fail_the_call_and_is_reported(shared_cluster):
    @ray.remote(checkpoint_interval=1)
    class Unsaveable:
        def __init__(self):
            self.calls = 0

        def call(self):
            self.calls += 1
            return self.calls

        def __ray_save__(self):
            raise RuntimeError("no checkpoint today")

    actor = Unsaveable.remote()
    assert ray.get([actor.call.remote(), actor.call.remote()], timeout=60) == [1, 2]
    reported = wait_for(lambda: [e for e in ray.error_info() if e["type"] == "checkpoint"],
                        timeout=10, what="the checkpoint error")
    assert "no checkpoint today" in reported[0]["message"], reported


def test_an_actor_without_checkpointing_restarts_from_its_constructor(ray_start):
    ray_start(num_cpus=2)

    @ray.remote(max_restarts=1)
    class Accumulator:
        def __init__(self):
            self.total = 0

        def add(self, x):
            self.total += x
            return self.total

        def pid(self):
            return os.getpid()

    acc = Accumulator.remote()
    assert ray.get([acc.add.remote(1), acc.add.remote(2)]) == [1, 3]
    pid = ray.get(acc.pid.remote())
    os.kill(pid, 9)
    wait_for(lambda: _restarted(acc, pid), 30, "the restarted actor to answer")
    assert ray.get(acc.add.remote(10), timeout=60) == 10
