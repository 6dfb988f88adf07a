"""Bad input and attaching from outside: malformed frames on the raylet socket, and a
cluster started with `rayd start` that a driver attaches to."""

import json
import shutil
import os
import socket
import struct
import subprocess
import sys
import tempfile

import pytest

import ray
from ray._private import worker as _worker

from conftest import _alive, run_driver, wait_for

RAYD = os.path.join(os.path.dirname(sys.executable), "rayd")


def _raw_raylet_connection():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(_worker.global_worker.info["raylet_socket_name"])
    return sock


def _closed(sock):
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("frame", [
    struct.pack("<I", 0xFFFFFFFF) + b"x" * 16,  # absurd length
    struct.pack("<I", 5) + b"\xff\xff\xff\xff\xff",  # not protobuf
    struct.pack("<I", 0),  # an empty message
])
def test_a_malformed_frame_drops_only_that_connection(shared_cluster, frame):
    @ray.remote
    def ok():
        return "still serving"

    bad = _raw_raylet_connection()
    bad.sendall(frame)
    assert wait_for(lambda: _closed(bad), 10, "the raylet to drop the bad connection")
    bad.close()
    assert ray.get(ok.remote(), timeout=30) == "still serving"
    log = os.path.join(_worker.global_worker.info["session_dir"], "logs", "rayd-raylet.log")
    assert "closing a connection" in open(log).read()


def test_a_driver_that_dies_midway_hurts_nobody(shared_cluster):
    address = _worker.global_worker.info["redis_address"]
    out = run_driver(address, (
        "@ray.remote\n"
        "def slow():\n    import time; time.sleep(30)\n"
        "ids = [slow.remote() for _ in range(4)]\n"
        "print('submitted', flush=True)\n"
        "os._exit(1)\n"
    ))
    assert "submitted" in out.stdout, out.stderr

    @ray.remote(num_cpus=0)
    def ok():
        return 1

    assert ray.get(ok.remote(), timeout=60) == 1


def test_attach_to_a_node_started_with_rayd_start(cleanup):
    # Socket paths are limited to 107 bytes: pytest's tmp_path can be deeper than that.
    temp_dir = tempfile.mkdtemp(prefix="rayd-attach-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYD_")}
    started = subprocess.run(
        [RAYD, "start", "--head", "--redis-port", str(port), "--object-manager-port", "0",
         "--num-cpus", "2", "--temp-dir", temp_dir],
        capture_output=True, text=True, timeout=120, env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        with open(os.path.join(temp_dir, "node.json")) as f:
            state = json.load(f)
        pids = [p["pid"] for p in state["processes"]]
        # The head's secret, as its operator hands it over.
        ray.init(redis_address=f"127.0.0.1:{port}", redis_password_file=state["redis_password_file"])

        @ray.remote
        def square(x):
            return x * x

        assert ray.get([square.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
        assert ray.cluster_resources()["CPU"] == 2
        assert len(ray.nodes()) == 1
        ray.shutdown()
    finally:
        stopped = subprocess.run([RAYD, "stop", "--temp-dir", temp_dir], capture_output=True, text=True,
                                 timeout=60, env=env)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: not any(_alive(p) for p in pids), 15, "the node's daemons to exit")
    leftover = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"processes left behind: {leftover.stdout}"
    shutil.rmtree(temp_dir, ignore_errors=True)
