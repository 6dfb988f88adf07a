"""Fixtures that start and stop real local rayd clusters, leaving nothing running."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import ray
from ray._private import worker as _worker


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        return False


def wait_for(condition, timeout=10.0, what="a condition"):
    """Polls `condition` until it is true; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def stop_cluster(cluster):
    """Disconnects, stops every node of `cluster` and waits until each of its processes
    (daemons, workers, redis-servers) is gone."""
    ray.shutdown()
    pids = [pid for node in cluster.list_all_nodes() for pid in node.all_pids()]
    cluster.shutdown()
    wait_for(lambda: not any(_alive(p) for p in pids), 15, "every process of the cluster to exit")


def run_driver(address, body):
    """Runs `body` as another driver attached to the cluster at `address` (with os, ray,
    sys and time imported); returns the finished process."""
    program = f"import os, ray, sys, time\nray.init(redis_address={address!r})\n" + body
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)


def _start(**kwargs):
    ray.init(**kwargs)
    node = _worker.global_worker.node
    return node.pids() if node is not None else []


def _stop(pids):
    ray.shutdown()
    wait_for(lambda: not any(_alive(p) for p in pids), 15, "every daemon of the node to exit")


_shared = {"pids": None}


def _stop_shared():
    if _shared["pids"] is not None:
        pids, _shared["pids"] = _shared["pids"], None
        _stop(pids)


@pytest.fixture
def shared_cluster():
    """A 2-CPU cluster that consecutive tests share when they don't change its state."""
    if _shared["pids"] is None or not ray.is_initialized():
        ray.shutdown()
        _shared["pids"] = _start(num_cpus=2)
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_at_end():
    yield
    _stop_shared()


@pytest.fixture
def ray_start():
    """A fresh cluster for one test; the test calls it with ray.init's arguments."""
    _stop_shared()
    started = []

    def start(**kwargs):
        kwargs.setdefault("num_cpus", 2)
        started.append(_start(**kwargs))
        return _worker.global_worker

    yield start
    for pids in started:
        _stop(pids)
    ray.shutdown()


@pytest.fixture
def cleanup():
    """For a test that calls ray.init() itself: no shared cluster before, shutdown after."""
    _stop_shared()
    yield
    ray.shutdown()


RAYD = os.path.join(os.path.dirname(sys.executable), "rayd")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def rayd_node(*flags, command=(RAYD,)):
    """A head node started with `rayd start` (or `command`), stopped and checked gone after."""
    # Socket paths are limited to 107 bytes: pytest's tmp_path can be deeper than that.
    temp_dir = tempfile.mkdtemp(prefix="rayd-node-")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYD_")}
    started = subprocess.run(
        [*command, "start", "--head", "--redis-port", str(port), "--object-manager-port", "0",
         "--num-cpus", "1", "--temp-dir", temp_dir, *flags],
        capture_output=True, text=True, timeout=120, env=env)
    pids = []
    given = os.environ.get("RAYD_REDIS_PASSWORD_FILE")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        with open(os.path.join(temp_dir, "node.json")) as f:
            state = json.load(f)
        pids = [p["pid"] for p in state["processes"]]
        # Drivers of the test attach with the head's secret, as an operator gives it.
        os.environ["RAYD_REDIS_PASSWORD_FILE"] = state["redis_password_file"]
        yield port, started, temp_dir
    finally:
        if given is None:
            os.environ.pop("RAYD_REDIS_PASSWORD_FILE", None)
        else:
            os.environ["RAYD_REDIS_PASSWORD_FILE"] = given
        stopped = subprocess.run([*command, "stop", "--temp-dir", temp_dir], capture_output=True,
                                 text=True, timeout=60, env=env)
        wait_for(lambda: not any(_alive(p) for p in pids), 15, "the node's daemons to exit")
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
