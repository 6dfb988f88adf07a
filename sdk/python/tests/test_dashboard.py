"""The web dashboard of a running two-node cluster, in a real (headless) Chromium driven by
Playwright: both nodes, a running actor and a failed task appear; its JSON API; `rayd
timeline`; `ray.init(include_webui=True)`. Saves the screenshots the README shows."""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

import ray
from ray.cluster_utils import Cluster

from conftest import _stop_shared, stop_cluster, wait_for

CHROMIUM = "/usr/bin/chromium"
DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs")
RAYD = os.path.join(os.path.dirname(sys.executable), "rayd")
# Chromium as this machine allows it: no sandbox (root in a container), no GPU, nothing
# fetched from the network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n


@ray.remote
def fail():
    raise ValueError("meant to fail for the dashboard")


@ray.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def cluster():
    """Two nodes; the head runs the dashboard; an actor lives on node 2; a task failed."""
    _stop_shared()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_webui": True},
                      shutdown_at_exit=False)
    try:
        cluster.add_node(num_cpus=2, resources={"node2": 1})
        cluster.connect()
        counter = Counter.options(resources={"node2": 0.5}).remote()
        assert ray.get([counter.add.remote() for _ in range(3)]) == [1, 2, 3]
        ray.get([nap.remote(0.05 * i) for i in range(6)])
        with pytest.raises(ray.exceptions.RayTaskError):
            ray.get(fail.remote())
        yield cluster, counter
    finally:
        stop_cluster(cluster)


def test_the_api_reads_the_cluster_and_refuses_writes(cluster):
    url = ray.get_webui_url()
    assert url and url.startswith("http://127.0.0.1:"), url
    api = get_json(url + "/api/cluster")
    assert api["alive"] == 2 and api["dead"] == 0
    assert sorted(n["address"] for n in api["nodes"]) == ["127.0.0.2", "127.0.0.3"]
    assert all(n["metrics_ports"]["metrics_port"] > 0 for n in api["nodes"])
    tasks = wait_for(lambda: (t := get_json(url + "/api/tasks"))["counts"].get("failed") and t, 10,
                     "the failed task in the task table")
    failed = [t for t in tasks["latest"] if t["state"] == "failed"]
    assert failed[0]["function"].endswith("fail") and "meant to fail" in failed[0]["error"]
    actors = get_json(url + "/api/actors")["actors"]
    assert [(a["class"], a["state"], a["node"]) for a in actors] == [
        (actors[0]["class"], "alive", "127.0.0.3")] and "Counter" in actors[0]["class"]
    trace = get_json(url + "/api/timeline")
    assert any(e["ph"] == "X" and e["name"].endswith("nap") for e in trace)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url + "/api/cluster", data=b"{}", method="POST"))
    assert refused.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(url + "/api/logs?node=nothex")
    assert bad.value.code == 400


def test_rayd_timeline_writes_the_jobs_chrome_trace(cluster, tmp_path):
    head = cluster[0]
    # Workers send their events in batches: wait until every task of the fixture has its span
    # (the actor's creation and 3 calls, 6 naps, 1 failure), so both readings below see the
    # same table.
    expected = wait_for(lambda: (t := ray.timeline()) and sum(e["ph"] == "X" for e in t) == 11 and t,
                        10, "a span for each of the fixture's eleven tasks")
    out = tmp_path / "trace.json"
    # The cluster's secret, as an operator gives it.
    env = {**os.environ, "RAYD_REDIS_PASSWORD": head.redis_password}
    done = subprocess.run([RAYD, "timeline", "--redis-address", head.address, "-o", str(out)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    trace = json.loads(out.read_text())
    # The same events (to the microsecond: the two sides multiply floats differently).
    assert ({(e["name"], e["ph"], round(e["ts"])) for e in trace}
            == {(e["name"], e["ph"], round(e["ts"])) for e in expected})
    assert any(e["ph"] == "X" and e.get("args", {}).get("error") for e in trace)
    done = subprocess.run([RAYD, "timeline", "--redis-address", head.address, "--job", "xyz"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1 and "--job `xyz` is not a job id" in done.stderr


def test_a_browser_shows_both_nodes_the_actor_and_the_failed_task(cluster):
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), "Chromium is missing: run scripts/install-deps.sh (make deps)"
    url = ray.get_webui_url()
    with tempfile.TemporaryDirectory(prefix="rayd-chromium-") as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 800})
        try:
            page = browser.new_page()
            page.goto(url + "/#cluster")
            rows = page.locator("#nodes tbody tr")
            rows.nth(1).wait_for(timeout=15_000)
            assert rows.count() == 2
            text = page.locator("#nodes").inner_text()
            assert "127.0.0.2" in text and "127.0.0.3" in text and text.count("alive") == 2
            page.screenshot(path=os.path.join(DOCS, "dashboard.png"), full_page=True)

            page.goto(url + "/#actors")
            actor = page.locator("#actors tbody tr", has_text="Counter")
            actor.wait_for(timeout=15_000)
            assert "alive" in actor.inner_text() and "127.0.0.3" in actor.inner_text()

            page.goto(url + "/#tasks")
            failed = page.locator("#tasks tbody tr", has_text="meant to fail for the dashboard")
            failed.first.wait_for(timeout=15_000)
            assert "failed" in failed.first.inner_text()
            page.screenshot(path=os.path.join(DOCS, "dashboard-tasks.png"), full_page=True)

            page.goto(url + "/#timeline")
            page.locator("#timeline .span").first.wait_for(timeout=15_000)
            assert page.locator("#timeline .span.failed").count() >= 1

            page.goto(url + "/#logs")
            page.locator("#logs .log").first.wait_for(timeout=15_000)
            assert "rayd-raylet.log" in page.locator("#logs").inner_text()
        finally:
            browser.close()


def test_init_prints_the_dashboard_url_and_get_webui_url_returns_it(capfd):
    _stop_shared()
    ray.shutdown()
    try:
        info = ray.init(num_cpus=1, include_webui=True)
        url = ray.get_webui_url()
        assert url == info["webui_url"] and url.startswith("http://127.0.0.1:")
        assert f"View the rayd dashboard at {url}" in capfd.readouterr().err
        assert urllib.request.urlopen(url + "/health", timeout=5).status == 200
        assert get_json(url + "/api/cluster")["alive"] == 1
    finally:
        ray.shutdown()
    ray.init(num_cpus=1)
    try:
        assert ray.get_webui_url() is None, "off unless asked for"
    finally:
        ray.shutdown()
