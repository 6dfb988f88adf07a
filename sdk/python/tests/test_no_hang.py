"""Waits that cannot hang: a driver blocked in `ray.get` hears of its raylet's death (or
`rayd stop`) within a second, and `get`/`wait` take any number of refs."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import ray
from ray import exceptions

from conftest import rayd_node, wait_for


def test_a_blocked_get_raises_within_a_second_of_the_raylets_death(ray_start):
    worker = ray_start(num_cpus=1)
    raylet = worker.node.pids()[-1]

    @ray.remote
    def forever():
        time.sleep(3600)

    ref = forever.remote()
    killed = []

    def kill():
        time.sleep(0.5)
        os.kill(raylet, signal.SIGKILL)
        killed.append(time.monotonic())

    threading.Thread(target=kill, daemon=True).start()
    with pytest.raises(exceptions.RayletConnectionError, match="raylet"):
        ray.get(ref)
    assert killed and time.monotonic() - killed[0] < 1.0


def test_a_blocked_get_raises_when_rayd_stop_runs():
    with rayd_node() as (port, _, temp_dir):
        program = (
            "import time, ray\n"
            f"ray.init(redis_address='127.0.0.1:{port}')\n"
            "@ray.remote\n"
            "def forever():\n"
            "    time.sleep(3600)\n"
            "ref = forever.remote()\n"
            "print('waiting', flush=True)\n"
            "try:\n"
            "    ray.get(ref)\n"
            "except Exception as e:\n"
            "    print('raised', type(e).__name__, e, flush=True)\n"
        )
        driver = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert driver.stdout.readline().strip() == "waiting"
            stop = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rayd"), "stop",
                                   "--temp-dir", temp_dir], capture_output=True, text=True,
                                  timeout=60)
            stopped = time.monotonic()
            assert stop.returncode == 0, stop.stderr
            out, err = driver.communicate(timeout=10)
            assert time.monotonic() - stopped < 1.0
            assert "raised RayletConnectionError" in out, out + err
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()


def test_get_and_wait_take_fifty_thousand_refs(shared_cluster):
    refs = [ray.put(i) for i in range(50_000)]
    assert ray.get(refs) == list(range(50_000))
    ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=60)
    assert len(ready) == 50_000 and not not_ready
    # The connection to the store is still good.
    assert ray.get(ray.put("after")) == "after"


def test_get_and_wait_of_many_pending_refs_time_out_cleanly(shared_cluster):
    missing = [ray.ObjectID(os.urandom(20)) for _ in range(30_000)]
    ready, not_ready = ray.wait(missing, num_returns=1, timeout=0.5)
    assert not ready and len(not_ready) == 30_000
    with pytest.raises(exceptions.GetTimeoutError):
        ray.get(missing, timeout=0.5)
    assert ray.get(ray.put("after")) == "after"


def _redis_server_pid(port):
    """The pid of the redis-server that rayd-redis-shard started on `port`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        # redis-server shows its address as its title.
        if "redis-server" in cmdline and re.search(rf":{port}\b", cmdline):
            return int(pid)
    return None


def test_a_driver_exports_its_functions_again_after_a_shard_restart(ray_start):
    ray_start(num_cpus=1)
    from ray._private import gcs

    # A fresh worker per call: each loads the definition from the GCS.
    @ray.remote(max_calls=1)
    def f(x):
        return x + 1

    assert ray.get(f.remote(1)) == 2
    [shard] = gcs.command("LRANGE", "rayd:shards", 0, -1)
    port = int(shard.decode().rsplit(":", 1)[1])
    pid = _redis_server_pid(port)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (_redis_server_pid(port) or pid) != pid, 10, "the shard to restart")
    started = time.monotonic()
    assert ray.get(f.remote(2), timeout=20) == 3
    assert time.monotonic() - started < 10
