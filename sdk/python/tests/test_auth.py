"""The cluster secret seen from drivers: a local cluster has one, outsiders without it can
neither write to its GCS nor run code, a forged function definition is refused by the
worker, and a driver with the wrong secret gets a clear error."""

import os
import stat
import subprocess
import sys

import pytest

import ray
from ray._private import gcs, serialization
from ray._private import worker as _worker

from conftest import rayd_node, run_driver


def _redis_cli(address, *args, password=None):
    host, port = address.rsplit(":", 1)
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    if password:
        env["REDISCLI_AUTH"] = password
    out = subprocess.run(["redis-cli", "-h", host, "-p", port, *args], capture_output=True,
                         text=True, timeout=10, env=env)
    return out.stdout + out.stderr


def test_a_local_cluster_has_a_secret_that_outsiders_lack(ray_start, tmp_path):
    worker = ray_start(num_cpus=1)
    address = worker.info["redis_address"]
    secret_file = os.path.join(worker.node.session_dir, "redis_password")
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    with open(secret_file) as f:
        secret = f.read()

    # Redis refuses a client without the password: no forged function gets in.
    marker = tmp_path / "forged-ran"
    forged = serialization.cloudpickle.dumps(lambda: open(marker, "w").write("owned"))
    function_id = os.urandom(20)
    key = b"rayd:function:" + function_id.hex().encode()
    assert "NOAUTH" in _redis_cli(address, "HSET", key.decode(), "definition", "x")
    assert "WRONGPASS" in _redis_cli(address, "PING", password="guess")

    # An insider's write without the secret's MAC (here: with a wrong one) is refused by
    # the worker, which names the function; the pickle never runs.
    core = worker.core
    gcs.command("HSET", key, "job", core.job_id.hex(), "name", "forged", "definition", forged,
                "mac", b"\0" * 32, shard=function_id)
    [result] = core.submit_task(function_id, "forged", [], [], 1, {"CPU": 1.0}, 0, 0)
    with pytest.raises(Exception) as error:
        ray.get(result, timeout=60)
    assert "MAC" in str(error.value) and "forged" in str(error.value)
    assert not marker.exists()

    # Another driver on this machine finds the secret in the session dir.
    out = run_driver(address, "print(ray.get(ray.put(41)) + 1)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "42"
    assert secret not in out.stdout + out.stderr


def test_a_driver_with_the_wrong_secret_gets_a_clear_error():
    with rayd_node() as (port, _, temp_dir):
        address = f"127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAYD_")}
        for password, expected in [("wrong", "refused the password"),
                                   (None, "requires the cluster's secret")]:
            program = (f"import ray\nray.init(redis_address={address!r}, "
                       f"_redis_password={password!r})\n")
            out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                                 timeout=60, env=env)
            assert out.returncode != 0
            assert expected in out.stderr, out.stderr
        # The operator's copy of the secret file attaches.
        secret_file = os.path.join(temp_dir, "node.json")
        import json
        with open(secret_file) as f:
            password_file = json.load(f)["redis_password_file"]
        program = (f"import ray\nray.init(redis_address={address!r}, "
                   f"redis_password_file={password_file!r})\nprint(ray.get(ray.put(7)))\n")
        out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                             timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-1] == "7"


def test_init_refuses_an_unreadable_password_file(cleanup, tmp_path):
    with pytest.raises(ValueError, match="redis_password_file"):
        _worker.init(redis_address="127.0.0.1:1", redis_password_file=str(tmp_path / "none"))
