"""The bugs an old (Ray 0.5) program met on rayd, each as the program met it."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import ray
from conftest import _alive, rayd_node, wait_for

# 1. Actors outlive their handles.

@ray.remote(num_gpus=1)
class GpuActor:
    def pid(self):
        return os.getpid()


@ray.remote(num_cpus=0)
class Signal:
    def __init__(self):
        self.set = False

    def send(self):
        self.set = True

    def is_set(self):
        return self.set


def test_an_actor_whose_last_handle_is_gone_frees_its_gpu(ray_start):
    ray_start(num_cpus=2, num_gpus=1)
    a = GpuActor.remote()
    pid = ray.get(a.pid.remote(), timeout=60)
    del a
    wait_for(lambda: not _alive(pid), 15, "the actor's process to end")
    # The one GPU is free again: a second GPU actor is created.
    b = GpuActor.remote()
    assert ray.get(b.pid.remote(), timeout=60) != pid


def test_a_handle_passed_to_a_task_keeps_the_actor_until_the_task_is_done(ray_start):
    ray_start(num_cpus=2, num_gpus=1)
    signal = Signal.remote()

    @ray.remote
    def use(handle, signal):
        import time
        deadline = time.monotonic() + 60
        while not ray.get(signal.is_set.remote()):
            assert time.monotonic() < deadline, "never signalled"
            time.sleep(0.01)
        return ray.get(handle.pid.remote())

    a = GpuActor.remote()
    pid = ray.get(a.pid.remote(), timeout=60)
    result = use.remote(a, signal)
    del a
    # The task's copy keeps the actor: it still serves calls once the driver's handle is gone.
    ray.get(signal.send.remote())
    assert ray.get(result, timeout=60) == pid
    # The task ended with its copy: nobody holds the actor now.
    wait_for(lambda: not _alive(pid), 15, "the actor's process to end once the task's copy is gone")
    b = GpuActor.remote()
    assert ray.get(b.pid.remote(), timeout=60) != pid


def test_copies_of_a_handle_in_the_driver_keep_the_actor(ray_start):
    ray_start(num_cpus=2, num_gpus=1)
    a = GpuActor.remote()
    pid = ray.get(a.pid.remote(), timeout=60)
    # Two puts: one list of [a, a] would unpickle as one handle (pickle's memo).
    first, second = ray.get(ray.put(a)), ray.get(ray.put(a))  # two more handles here
    assert first is not second
    del a
    assert ray.get(first.pid.remote(), timeout=60) == pid
    del first
    # The second copy alone keeps the actor.
    assert ray.get(second.pid.remote(), timeout=60) == pid
    del second
    wait_for(lambda: not _alive(pid), 15, "the actor's process to end")


def test_ray_kill_frees_an_actor_at_once(ray_start):
    ray_start(num_cpus=2, num_gpus=1)
    a = GpuActor.remote()
    pid = ray.get(a.pid.remote(), timeout=60)
    ray.kill(a)
    wait_for(lambda: not _alive(pid), 15, "the killed actor's process to end")
    b = GpuActor.remote()
    assert ray.get(b.pid.remote(), timeout=60) != pid


# 2. A method hidden by an instance attribute of the same name.

def test_a_method_is_found_on_the_class_not_the_instance(shared_cluster):
    @ray.remote
    class Counter:
        def __init__(self):
            self.value = 0

        def increment(self):
            self.value += 1
            return self.value

        def value(self):
            return "method"

    c = Counter.remote()
    assert ray.get(c.increment.remote()) == 1
    assert ray.get(c.value.remote()) == "method"


def test_static_and_class_methods_of_an_actor(shared_cluster):
    @ray.remote
    class Tools:
        @staticmethod
        def double(x):
            return 2 * x

        @classmethod
        def name(cls):
            return cls.__name__

    t = Tools.remote()
    assert ray.get([t.double.remote(4), t.name.remote()]) == [8, "Tools"]


# 3. ray.wait([]).

def test_wait_on_no_ids_returns_two_empty_lists(shared_cluster):
    assert ray.wait([]) == ([], [])
    assert ray.wait([], num_returns=1, timeout=10) == ([], [])


# 4. RAYD_TEMP_DIR for a driver's own node.

def test_rayd_temp_dir_in_the_environment_of_ray_init(cleanup):
    temp_dir = tempfile.mkdtemp(prefix="rayd-env-")
    program = (
        "import ray\n"
        "info = ray.init(num_cpus=1)\n"
        "@ray.remote\n"
        "def f():\n    return 7\n"
        "print(ray.get(f.remote(), timeout=60), info['session_dir'], flush=True)\n"
        "ray.shutdown()\n")
    try:
        out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "RAYD_TEMP_DIR": temp_dir})
        assert out.returncode == 0, out.stderr
        value, session_dir = out.stdout.split()
        assert value == "7"
        assert session_dir.startswith(temp_dir + "/driver_"), session_dir
    finally:
        leftover = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert leftover.stdout.strip() == "", f"processes left behind: {leftover.stdout}"


# 5. Host names.

def test_a_node_started_with_a_host_name_and_a_driver_attaching_by_name(cleanup):
    with rayd_node("--node-ip-address", "localhost") as (port, started, _):
        assert "127.0.0.1 (resolved from localhost)" in started.stdout, started.stdout
        ray.init(redis_address=f"localhost:{port}")
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"

        @ray.remote
        def f():
            return 1

        assert ray.get(f.remote(), timeout=60) == 1
        ray.shutdown()
        # The driver's own address given as a name too.
        ray.init(redis_address=f"localhost:{port}", node_ip_address="localhost")
        assert ray.get(f.remote(), timeout=60) == 1
        ray.shutdown()


def test_ray_init_accepts_a_host_name_for_its_own_node(ray_start):
    worker = ray_start(num_cpus=1, node_ip_address="localhost")
    assert worker.info["node_ip_address"] == "127.0.0.1"


# 6. Arguments checked at .remote().

def test_a_call_that_does_not_fit_the_signature_fails_at_remote(shared_cluster):
    @ray.remote
    def f():
        return 1

    @ray.remote
    def g(a, b=2, *rest, key=None):
        return a

    with pytest.raises(TypeError, match="too many positional arguments"):
        f.remote(3)
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        g.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        g.remote(1, nope=2)
    with pytest.raises(TypeError):
        f.options(num_cpus=1).remote(1)
    assert ray.get([g.remote(1, 2, 3, key=4), g.remote(a=5)]) == [1, 5]


def test_actor_constructors_and_methods_are_checked_at_remote(shared_cluster):
    @ray.remote
    class Adder:
        def __init__(self, start):
            self.total = start

        def add(self, x, y=0):
            self.total += x + y
            return self.total

    with pytest.raises(TypeError, match="missing a required argument: 'start'"):
        Adder.remote()
    adder = Adder.remote(1)
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        adder.add.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        adder.add.remote(1, 2, 3)
    assert ray.get(adder.add.remote(1, y=1)) == 3

    @ray.remote
    def call_through_a_copy(handle):
        try:
            handle.add.remote()
        except TypeError as e:
            return str(e)

    assert "missing a required argument" in ray.get(call_through_a_copy.remote(adder))
