"""Each daemon's `/health` and `/metrics` (Prometheus text), scraped while a workload runs:
the counters move as the workload says, and `/health` says why when a daemon does not serve."""

import os
import re
import signal
import urllib.error
import urllib.request

import numpy as np
import pytest

import ray
from ray._private import gcs
from ray.cluster_utils import Cluster

from conftest import _alive, _stop_shared, stop_cluster, wait_for

LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def fetch(url):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(address):
    """The samples of `http://address/metrics`: "name{labels}" -> value."""
    status, body = fetch(f"http://{address}/metrics")
    assert status == 200, body
    samples = {}
    for line in body.splitlines():
        match = LINE.match(line)
        if match and not line.startswith("#"):
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def endpoints():
    """daemon name -> ["ip:port", ...] of every /metrics the GCS records."""
    found = {}
    for field, port in gcs.hash_to_dict(gcs.command("HGETALL", "rayd:metrics")).items():
        daemon, ip = field.split("@")
        found.setdefault(daemon, []).append(f"{ip}:{int(port)}")
    return found


def endpoint(daemon, ip=None):
    addresses = [a for a in endpoints().get(daemon, []) if ip is None or a.startswith(ip + ":")]
    assert len(addresses) == 1, f"{daemon} at {ip}: {endpoints()}"
    return addresses[0]


@ray.remote
def square(x):
    return x * x


@ray.remote
def fail():
    raise ValueError("meant to fail")


def test_a_single_node_counts_its_tasks_objects_and_redis(cleanup):
    info = ray.init(num_cpus=2, include_webui=False)
    ip = info["node_ip_address"]
    raylet = endpoint("rayd-raylet", ip)
    plasma = endpoint("rayd-plasma", ip)
    shard = endpoint("rayd-redis-shard")
    (node,) = ray.nodes()
    assert node["MetricsExportPort"] == int(raylet.split(":")[1])
    assert node["MetricsPorts"]["plasma_metrics_port"] == int(plasma.split(":")[1])
    for address in (raylet, plasma, shard):
        assert fetch(f"http://{address}/health") == (200, "ok\n")

    before = scrape(raylet)
    assert ray.get([square.remote(i) for i in range(10)]) == [i * i for i in range(10)]
    after = wait_for(lambda: (s := scrape(raylet))["rayd_raylet_tasks_finished_total"]
                     >= before["rayd_raylet_tasks_finished_total"] + 10 and s, 10, "10 finished tasks")
    assert after["rayd_raylet_tasks_submitted_total"] - before["rayd_raylet_tasks_submitted_total"] == 10
    assert after["rayd_raylet_tasks_finished_total"] - before["rayd_raylet_tasks_finished_total"] == 10
    assert after["rayd_raylet_tasks_failed_total"] == before["rayd_raylet_tasks_failed_total"]
    assert after["rayd_raylet_workers_started_total"] >= 1

    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(fail.remote())
    failed = wait_for(lambda: (s := scrape(raylet))["rayd_raylet_tasks_failed_total"]
                      == before["rayd_raylet_tasks_failed_total"] + 1 and s, 10, "one failed task")
    assert failed["rayd_raylet_tasks_submitted_total"] - before["rayd_raylet_tasks_submitted_total"] == 11
    assert wait_for(lambda: scrape(raylet)["rayd_raylet_workers"] >= 1, 10, "a registered worker")
    assert failed["rayd_raylet_gcs_round_trip_seconds_count"] > 0

    store_before = scrape(plasma)
    array = ray.put(np.ones(4 << 20, dtype=np.uint8))
    store = scrape(plasma)
    assert store["rayd_plasma_objects"] >= store_before["rayd_plasma_objects"] + 1
    assert store["rayd_plasma_used_bytes"] >= store_before["rayd_plasma_used_bytes"] + (4 << 20)
    assert store["rayd_plasma_capacity_bytes"] > 0
    del array

    redis = scrape(shard)
    assert redis['rayd_redis_shard_up{server="primary"}'] == 1
    assert redis['rayd_redis_shard_up{server="shard 0"}'] == 1
    assert wait_for(lambda: scrape(shard)['rayd_redis_shard_ping_seconds_count{server="primary"}'] > 0,
                    10, "a health-check ping")


def _redis_server_pid(port):
    """The redis-server listening on `port` (its command line names the port)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        # Redis retitles itself `redis-server <ip>:<port>`; before that, its config file
        # is `<data dir>/<port>/redis.conf`.
        line = b" ".join(argv)
        if b"redis-server" in argv[0] and (f":{port}".encode() in line or f"/{port}/".encode() in line):
            return int(entry)
    return None


def _parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_health_says_why_while_the_primary_redis_does_not_answer(cleanup):
    info = ray.init(num_cpus=1, include_webui=False)
    shard = endpoint("rayd-redis-shard")
    raylet = endpoint("rayd-raylet", info["node_ip_address"])
    port = int(info["redis_address"].rsplit(":", 1)[1])
    pid = _redis_server_pid(port)
    assert pid is not None and _alive(pid)
    assert fetch(f"http://{shard}/health")[0] == 200
    os.kill(pid, signal.SIGSTOP)
    try:
        status, body = wait_for(lambda: (r := fetch(f"http://{shard}/health"))[0] != 200 and r, 10,
                                "the supervisor to notice")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status == 503
    assert "not serving: redis primary" in body and "health check" in body, body
    wait_for(lambda: fetch(f"http://{shard}/health")[0] == 200, 20, "the primary to answer again")

    # The supervisor frozen too (it would restart the primary): the raylet's heartbeats
    # time out, and its /health says so.
    assert fetch(f"http://{raylet}/health")[0] == 200
    pid = _redis_server_pid(port)
    frozen = [_parent(pid), pid]
    for p in frozen:
        os.kill(p, signal.SIGSTOP)
    try:
        status, body = wait_for(lambda: (r := fetch(f"http://{raylet}/health"))[0] != 200 and r, 20,
                                "the raylet to miss the GCS")
    finally:
        for p in frozen:
            os.kill(p, signal.SIGCONT)
    assert status == 503 and body.startswith("not serving: cannot reach the GCS"), body
    wait_for(lambda: fetch(f"http://{raylet}/health")[0] == 200, 20, "the raylet to reach the GCS again")


def test_two_nodes_count_pulls_and_the_global_scheduler_sees_both():
    _stop_shared()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, shutdown_at_exit=False)
    try:
        second = cluster.add_node(num_cpus=1, resources={"node2": 1})
        cluster.connect()
        head_ip = cluster.head_node.address
        scheduler = endpoint("rayd-global-scheduler")
        assert fetch(f"http://{scheduler}/health")[0] == 200
        wait_for(lambda: scrape(scheduler)["rayd_global_scheduler_live_nodes"] == 2, 20,
                 "the global scheduler to see both nodes")
        head_plasma = endpoint("rayd-plasma", head_ip)
        head_raylet = endpoint("rayd-raylet", head_ip)
        other_raylet = endpoint("rayd-raylet", second.address)
        before = scrape(head_plasma)
        remote_before = scrape(other_raylet)

        @ray.remote(resources={"node2": 1})
        def make():
            return np.ones(2 << 20, dtype=np.uint8)

        assert ray.get(make.remote()).sum() == 2 << 20
        after = wait_for(lambda: (s := scrape(head_plasma))["rayd_plasma_pulls_total"]
                         == before["rayd_plasma_pulls_total"] + 1 and s, 10, "one pull")
        assert after["rayd_plasma_pulled_bytes_total"] - before["rayd_plasma_pulled_bytes_total"] >= 2 << 20
        remote = wait_for(lambda: (s := scrape(other_raylet))["rayd_raylet_tasks_finished_total"]
                          == remote_before["rayd_raylet_tasks_finished_total"] + 1 and s, 10,
                          "the task to finish on node 2")
        assert remote["rayd_raylet_tasks_submitted_total"] == remote_before["rayd_raylet_tasks_submitted_total"] + 1
        head = scrape(head_raylet)
        assert head["rayd_raylet_tasks_forwarded_total"] + head["rayd_raylet_tasks_spilled_total"] >= 1
    finally:
        stop_cluster(cluster)
