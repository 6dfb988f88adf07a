"""A driver on a node that a deployment configured (deploy/ansible writes
/etc/rayd/rayd.toml; `RAYD_CONFIG` names the file here): `ray.init(redis_address=...)` and
`ray.init(address="auto")` attach to the raylet of the node the file names, without
`node_ip_address`, with the password the file holds."""

import os
import subprocess
import sys

import pytest

import ray
from ray.cluster_utils import Cluster

from conftest import _alive, _stop_shared, wait_for

WHERE = "print(ray._private.worker.global_worker.core.node_ip_address)"


@pytest.fixture
def two_nodes():
    _stop_shared()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, shutdown_at_exit=False)
    pids = []
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster, cluster.list_all_nodes()
    finally:
        for node in cluster.list_all_nodes():
            pids += node.all_pids()
        cluster.shutdown()
    wait_for(lambda: not any(_alive(p) for p in pids), 15, "every process of the cluster to exit")


def _driver(init_args, env):
    program = f"import ray\nray.init({init_args})\n{WHERE}\nray.shutdown()\n"
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_a_driver_attaches_to_the_node_its_deployed_config_names(two_nodes, tmp_path):
    cluster, nodes = two_nodes
    second = nodes[1]
    config = tmp_path / "rayd.toml"
    lines = [f'node_ip_address = "{second.address}"', f'redis_address = "{cluster.address}"']
    if cluster.redis_password:
        lines.append(f'redis_password = "{cluster.redis_password}"')
    config.write_text("\n".join(lines) + "\n")
    # No node.json of `rayd start` here: "auto" is the deployed node's cluster.
    env = {"RAYD_CONFIG": str(config), "RAYD_TEMP_DIR": str(tmp_path / "none")}
    for init_args in (f"redis_address={cluster.address!r}", "address='auto'"):
        done = _driver(init_args, env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == second.address, (init_args, done.stdout)


def test_a_deployed_config_of_another_cluster_is_ignored(two_nodes, tmp_path):
    cluster, nodes = two_nodes
    config = tmp_path / "rayd.toml"
    config.write_text(f'node_ip_address = "{nodes[1].address}"\nredis_address = "127.0.0.1:1"\n')
    extra = f", redis_password={cluster.redis_password!r}" if cluster.redis_password else ""
    done = _driver(f"redis_address={cluster.address!r}{extra}", {"RAYD_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    # As before: the node on the head's own loopback address.
    assert done.stdout.strip().splitlines()[-1] == nodes[0].address
