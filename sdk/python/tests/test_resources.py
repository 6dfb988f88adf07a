"""Resources: CPU limits, custom resources, fractional GPUs, infeasible tasks, and the
cluster views."""

import os
import time

import pytest

import ray

from conftest import run_driver


def _intervals_overlap_at_most(intervals, limit):
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak <= limit, peak


def test_cpu_requests_bound_concurrency(ray_start):
    ray_start(num_cpus=4)

    @ray.remote(num_cpus=2)
    def hold():
        start = time.time()
        time.sleep(0.5)
        return start, time.time()

    intervals = ray.get([hold.remote() for _ in range(4)], timeout=60)
    ok, peak = _intervals_overlap_at_most(intervals, 2)
    assert ok, f"{peak} tasks needing 2 CPUs ran at once on 4 CPUs"
    assert peak == 2


def test_custom_resources_and_zero_cpu_tasks(ray_start):
    ray_start(num_cpus=1, resources={"Widget": 1})

    @ray.remote(num_cpus=0, resources={"Widget": 1})
    def widget():
        start = time.time()
        time.sleep(0.3)
        return start, time.time()

    @ray.remote(num_cpus=1)
    def busy():
        time.sleep(1)
        return "cpu"

    cpu = busy.remote()
    intervals = ray.get([widget.remote() for _ in range(3)], timeout=60)
    assert _intervals_overlap_at_most(intervals, 1)[0]
    assert ray.get(cpu) == "cpu"
    assert ray.cluster_resources()["Widget"] == 1


def test_fractional_gpus_get_ids_and_cuda_visible_devices(ray_start):
    ray_start(num_cpus=4, num_gpus=2)

    @ray.remote(num_gpus=0.5)
    def half():
        time.sleep(0.3)
        return ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"], ray.get_resource_ids()

    @ray.remote(num_gpus=2)
    def both():
        return ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    @ray.remote
    def none():
        return ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    halves = ray.get([half.remote() for _ in range(2)])
    for ids, visible, resource_ids in halves:
        assert len(ids) == 1 and visible == str(ids[0])
        assert resource_ids["GPU"] == [(ids[0], 0.5)]
    assert sorted(ray.get(both.remote())[0]) == [0, 1]
    assert ray.get(both.remote())[1] in ("0,1", "1,0")
    assert ray.get(none.remote()) == ([], "")

    @ray.remote(num_gpus=1)
    class GpuActor:
        def ids(self):
            return ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    actor = GpuActor.remote()
    ids, visible = ray.get(actor.ids.remote())
    assert len(ids) == 1 and visible == str(ids[0])
    assert ray.cluster_resources()["GPU"] == 2


def test_cuda_visible_devices_of_the_node_are_its_gpus(ray_start, monkeypatch):
    """A node started where CUDA_VISIBLE_DEVICES names GPUs has those, and hands them out
    by their device numbers."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    ray_start(num_cpus=2)
    assert ray.cluster_resources().get("GPU") == 2

    @ray.remote(num_gpus=1)
    def one():
        time.sleep(0.3)
        return ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    got = ray.get([one.remote() for _ in range(2)])
    assert sorted(ids[0] for ids, _ in got) == [3, 5]
    assert all(visible == str(ids[0]) for ids, visible in got)


def test_an_infeasible_task_warns_and_stays_pending_while_others_run(ray_start):
    worker = ray_start(num_cpus=2)
    address = worker.info["redis_address"]
    out = run_driver(address, (
        "@ray.remote(num_cpus=64)\n"
        "def huge():\n    return 1\n"
        "@ray.remote\n"
        "def small():\n    return 2\n"
        "pending = huge.remote()\n"
        "print(ray.get(small.remote()))\n"
        "ready, _ = ray.wait([pending], timeout=0.5)\n"
        "print('pending' if not ready else 'ran')\n"
        "time.sleep(0.5)\n"
    ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "pending"]
    assert "huge" in out.stderr and "CPU" in out.stderr and "pending" in out.stderr


def test_worker_output_reaches_a_driver_that_is_not_waiting(ray_start):
    worker = ray_start(num_cpus=1)
    address = worker.info["redis_address"]
    # The driver submits and then makes no ray call: no wait of its own reads the
    # raylet's messages, so the line must come through the background reader. The driver
    # watches its own stdout (a file meanwhile) for the line, with a deadline.
    out = run_driver(address, (
        "import tempfile\n"
        "@ray.remote\n"
        "def speak():\n    print('hello from a task', flush=True)\n"
        "log = tempfile.TemporaryFile()\n"
        "saved = os.dup(1)\n"
        "os.dup2(log.fileno(), 1)\n"
        "speak.remote()\n"
        "def heard():\n    return b'hello from a task' in os.pread(log.fileno(), 1 << 20, 0)\n"
        "deadline = time.time() + 30\n"
        "while not heard() and time.time() < deadline:\n    time.sleep(0.01)\n"
        "os.dup2(saved, 1)\n"
        "print('heard' if heard() else 'not heard', flush=True)\n"
    ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["heard"], out.stdout


def test_nodes_and_resource_views(shared_cluster):
    nodes = ray.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"]
    assert ray.cluster_resources()["CPU"] == 2
    assert 0 <= ray.available_resources().get("CPU", 0) <= 2


def test_resources_for_cpu_or_gpu_are_refused(cleanup):
    with pytest.raises(ValueError, match="num_cpus"):
        ray.init(resources={"CPU": 2})
