"""`ray.cluster_utils.Cluster`: several rayd nodes on one machine, for tests and for trying a
cluster on a laptop (Ray's spelling).

Each node is a `rayd start` of its own (`--head` for the first, `--redis-address` for the
others) with its own temp dir (sockets, logs, `node.json`) and its own loopback address:
127.0.0.2 for the first node added, then 127.0.0.3, ... (the whole 127.0.0.0/8 reaches `lo` on
Linux). Every port is chosen free (the head's Redis port, free on its address and on
127.0.0.1, where Redis also listens) or left to the daemon (0), so clusters of several
processes on one machine do not collide. A driver attaches to a node by its address:
`ray.init(redis_address=cluster.address, node_ip_address=node.address)` (or
`cluster.connect()` for the head; `run_driver` for a driver in another process).

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1, resources={"node2": 1})
    cluster.wait_for_nodes()
    cluster.connect()
    ...
    cluster.shutdown()
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

__all__ = ["Cluster", "Node", "run_driver"]

# What a node gets unless `add_node` says otherwise (as Ray's cluster_utils: small nodes).
DEFAULT_NODE_ARGS: Dict[str, Any] = {
    "num_cpus": 1,
    "num_gpus": 0,
    "object_store_memory": 512 * 1024 * 1024,
}

# The `add_node` arguments, and the `rayd start` flag each becomes.
_FLAGS = {
    "num_cpus": "--num-cpus",
    "num_gpus": "--num-gpus",
    "resources": "--resources",
    "object_store_memory": "--object-store-memory",
    "object_manager_port": "--object-manager-port",
    "redis_port": "--redis-port",
    "num_redis_shards": "--num-redis-shards",
    "node_ip_address": "--node-ip-address",
    "include_webui": "--include-webui",
}

# How long a node may take to start, to appear in the node table, to stop.
START_TIMEOUT_S = 60.0
NODES_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


def _rayd_binary() -> str:
    """The `rayd` command: next to the daemons ($RAYD_BIN_DIR), in this Python's env, or on PATH."""
    candidates = []
    if os.environ.get("RAYD_BIN_DIR"):
        candidates.append(os.path.join(os.environ["RAYD_BIN_DIR"], "rayd"))
    candidates.append(os.path.join(sys.prefix, "bin", "rayd"))
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("rayd")
    if found is None:
        raise FileNotFoundError("cannot find the `rayd` command (set RAYD_BIN_DIR, or install rayd)")
    return found


def _free_port(*hosts: str) -> int:
    """A TCP port that was free a moment ago on every one of `hosts`."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
            ok = True
            for host in hosts[1:]:
                with socket.socket() as other:
                    try:
                        other.bind((host, port))
                    except OSError:
                        ok = False
                        break
            if ok:
                return port
    raise OSError(f"no port free on all of {hosts}")


def _proc_state(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z", "X")


def _descendants(pids: List[int]) -> List[int]:
    """Every living process below `pids` (workers, redis-servers), read from /proc."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: List[int] = []
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _started_from(temp_dir: str) -> List[int]:
    """Processes whose command line names `temp_dir` (a node's daemons read their config
    there): found even when `rayd start` died before recording them."""
    needle = os.fsencode(temp_dir.rstrip("/") + "/")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Node:
    """One node of a `Cluster`: its address, temp dir and daemons."""

    def __init__(self, address: str, temp_dir: str, head: bool, args: Dict[str, Any]):
        self.address = address
        self.node_ip_address = address
        self.temp_dir = temp_dir
        self.head = head
        self.args = args
        self.redis_address: Optional[str] = None
        self.session_dir: Optional[str] = None
        # (daemon name, pid) in start order, as `rayd start` recorded them.
        self.processes: List[Any] = []
        self.log = os.path.join(temp_dir, "rayd-start.log")

    @property
    def pids(self) -> List[int]:
        """The daemons' pids (not their workers')."""
        return [pid for _, pid in self.processes]

    @property
    def raylet_socket_name(self) -> str:
        return os.path.join(self.temp_dir, "sockets", "raylet")

    @property
    def plasma_store_socket_name(self) -> str:
        return os.path.join(self.temp_dir, "sockets", "plasma_store")

    @property
    def logs_dir(self) -> Optional[str]:
        return os.path.join(self.session_dir, "logs") if self.session_dir else None

    def all_pids(self) -> List[int]:
        """The daemons and everything they started that still runs."""
        alive = [p for p in self.pids if _alive(p)]
        alive += [p for p in _started_from(self.temp_dir) if p not in alive and _alive(p)]
        return alive + [p for p in _descendants(alive) if p not in alive]

    def is_running(self) -> bool:
        return any(_alive(p) for p in self.pids)

    def __repr__(self) -> str:
        role = "head" if self.head else "node"
        return f"<{role} {self.address} pids={self.pids}>"


class Cluster:
    """Nodes on this machine, each its own `rayd start`; see the module doc."""

    def __init__(self, initialize_head: bool = False, connect: bool = False,
                 head_node_args: Optional[Dict[str, Any]] = None, redis_password: Optional[str] = None,
                 shutdown_at_exit: bool = True):
        self.head_node: Optional[Node] = None
        self.worker_nodes: List[Node] = []
        self.removed_nodes: List[Node] = []
        self.redis_password = redis_password
        self._next_ip = 2
        self.connected = False
        if shutdown_at_exit:
            atexit.register(self.shutdown)
        if connect and not initialize_head:
            raise ValueError("Cluster(connect=True) needs initialize_head=True")
        if initialize_head:
            try:
                self.add_node(**(head_node_args or {}))
                if connect:
                    self.connect()
            except BaseException:
                self.shutdown()
                raise

    @property
    def address(self) -> Optional[str]:
        """host:port of the head's primary Redis (`ray.init(redis_address=...)`)."""
        return self.head_node.redis_address if self.head_node else None

    redis_address = address

    def list_all_nodes(self) -> List[Node]:
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    def _env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAYD_") or k in ("RAYD_BIN_DIR",)}
        if self.redis_password:
            env["RAYD_REDIS_PASSWORD"] = self.redis_password
        return env

    def add_node(self, wait: bool = True, **node_args: Any) -> Node:
        """Starts a node (the head when there is none yet) and returns it. `node_args`:
        num_cpus, num_gpus, resources (dict), object_store_memory, object_manager_port,
        node_manager_port, redis_port and num_redis_shards (head), node_ip_address,
        include_webui (head: the dashboard, on a free port), and `_system_config` (Ray's
        name): a dict of any other config keys, e.g. `{"node_death_timeout_ms": 1000}`,
        given to the node's daemons."""
        unknown = set(node_args) - set(_FLAGS) - {"node_manager_port", "_system_config"}
        if unknown:
            raise TypeError(f"add_node() got unexpected arguments: {', '.join(sorted(unknown))}")
        head = self.head_node is None
        args = {**DEFAULT_NODE_ARGS, **node_args}
        ip = args.pop("node_ip_address", None)
        if ip is None:
            ip = f"127.0.0.{self._next_ip}"
            self._next_ip += 1
        if head:
            args.setdefault("redis_port", _free_port(ip, "127.0.0.1"))
        elif "redis_port" in args or "num_redis_shards" in args:
            raise ValueError("redis_port and num_redis_shards are the head's settings")
        args.setdefault("object_manager_port", 0)
        node_manager_port = args.pop("node_manager_port", 0)
        system_config = args.pop("_system_config", None) or {}
        temp_dir = tempfile.mkdtemp(prefix="rayd-cluster-")
        node = Node(ip, temp_dir, head, args)
        command = [_rayd_binary(), "start", "--temp-dir", temp_dir, "--node-ip-address", ip]
        command += ["--head"] if head else ["--redis-address", self.address or ""]
        if args.get("include_webui"):
            # The dashboard takes a free port, as every other port here.
            command += ["--webui-port", "0"]
        for key, value in args.items():
            if value is None or value is False:
                continue
            if value is True:
                command.append(_FLAGS[key])
                continue
            if key == "resources":
                value = json.dumps(value)
            command += [_FLAGS[key], str(value)]
        env = self._env()
        for key in _ZERO_PORT_KEYS:
            if _knows_key(key):
                # Newer daemons' ports (the raylet's for other raylets, ...): 0 picks a free
                # one, so that nodes and clusters on one machine never collide.
                value = node_manager_port if key == "node_manager_port" else 0
                env[f"RAYD_{key.upper()}"] = str(value)
        for key, value in system_config.items():
            env[f"RAYD_{key.upper()}"] = str(value)
        try:
            with open(node.log, "w") as log:
                done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._stop(node, remove_dir=True)
            raise RuntimeError(f"rayd start did not finish within {START_TIMEOUT_S} s for {ip}") from None
        with open(node.log) as log:
            output = log.read()
        state_path = os.path.join(temp_dir, "node.json")
        if os.path.exists(state_path):
            with open(state_path) as f:
                state = json.load(f)
            node.redis_address = state["redis_address"]
            node.session_dir = state["session_dir"]
            node.processes = [(p["name"], p["pid"]) for p in state["processes"]]
            if head and not self.redis_password and state.get("redis_password_file"):
                # The secret the head generated: the other nodes and drivers need it.
                with open(state["redis_password_file"]) as f:
                    self.redis_password = f.read().strip()
        if done.returncode != 0 or not node.processes:
            self._stop(node, remove_dir=True)
            raise RuntimeError(f"rayd start failed ({done.returncode}) for {ip}:\n{output}")
        if head:
            self.head_node = node
        else:
            self.worker_nodes.append(node)
        if wait:
            self.wait_for_nodes()
        return node

    def remove_node(self, node: Node, allow_graceful: bool = True) -> None:
        """Stops `node`'s daemons and everything they started (SIGTERM, then SIGKILL after a
        grace period) and removes its temp dir."""
        if node is self.head_node:
            self.head_node = None
        elif node in self.worker_nodes:
            self.worker_nodes.remove(node)
        else:
            raise ValueError(f"{node!r} is not a node of this cluster")
        self._stop(node, remove_dir=True, grace=STOP_GRACE_S if allow_graceful else 0.0)
        self.removed_nodes.append(node)

    def kill_node(self, node: Node, remove_dir: bool = True) -> None:
        """Kills `node` as a crash would: SIGKILL to its daemons and everything they
        started, nothing told to anyone (the cluster must notice by itself). Its temp dir
        (logs) stays when `remove_dir` is false."""
        if node is self.head_node:
            raise ValueError("kill_node is for nodes other than the head")
        self.worker_nodes.remove(node)
        self._stop(node, remove_dir=remove_dir, grace=0.0, gently=False)
        self.removed_nodes.append(node)

    @staticmethod
    def _stop(node: Node, remove_dir: bool, grace: float = STOP_GRACE_S, gently: bool = True) -> None:
        everything = node.all_pids()
        # Daemons in reverse start order, each given the grace period: the raylet first
        # (it stops its workers), the GCS last.
        for pid in reversed(node.pids if gently else []):
            if not _alive(pid):
                continue
            _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        everything += [p for p in node.all_pids() if p not in everything]
        # The daemons in reverse start order first: a raylet that outlived its store by a
        # moment would see the store die and mark its node dead itself, which a crash
        # does not do.
        daemons = [p for p in reversed(node.pids) if p in everything]
        for pid in daemons + [p for p in everything if p not in daemons]:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + grace + 5.0
        while any(_alive(p) for p in everything):
            if time.monotonic() > deadline:
                left = [p for p in everything if _alive(p)]
                raise RuntimeError(f"processes of {node!r} did not exit: {left}")
            time.sleep(0.01)
        if remove_dir:
            shutil.rmtree(node.temp_dir, ignore_errors=True)

    def alive_node_addresses(self) -> List[str]:
        """Addresses of the nodes that the GCS node table lists as alive."""
        if self.address is None:
            return []
        return [n["address"] for n in self.status()["nodes"] if n["alive"]]

    def status(self) -> Dict[str, Any]:
        """`rayd status --json` of this cluster."""
        out = subprocess.run([_rayd_binary(), "status", "--json", "--redis-address", self.address or ""],
                             capture_output=True, text=True, env=self._env(), timeout=30)
        if not out.stdout.strip():
            raise RuntimeError(f"rayd status failed ({out.returncode}): {out.stderr}")
        return json.loads(out.stdout)

    def wait_for_nodes(self, timeout: float = NODES_TIMEOUT_S) -> None:
        """Waits until the GCS node table lists every node of this cluster as alive (and
        none of the removed ones)."""
        want = sorted(n.address for n in self.list_all_nodes())
        gone = {n.address for n in self.removed_nodes}
        deadline = time.monotonic() + timeout
        while True:
            try:
                alive = self.alive_node_addresses()
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                alive = None
            if alive is not None and sorted(set(alive) - gone) == want and not (set(alive) & gone):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for the nodes {want} "
                                   f"to be alive (alive: {alive})")
            time.sleep(0.05)

    def connect(self, namespace: Optional[str] = None, node: Optional[Node] = None) -> Dict[str, Any]:
        """`ray.init` of this process, attached to `node` (the head by default). `namespace`
        is Ray's (rayd has none) and is ignored."""
        import ray
        node = node or self.head_node
        if node is None:
            raise RuntimeError("the cluster has no head node")
        info = ray.init(redis_address=self.address, node_ip_address=node.address,
                        redis_password=self.redis_password)
        self.connected = True
        return info  # type: ignore[return-value]

    def shutdown(self) -> None:
        """Disconnects this process (if `connect` attached it) and stops every node, head
        last; removes their temp dirs. Safe twice."""
        if self.connected:
            import ray
            ray.shutdown()
            self.connected = False
        errors = []
        for node in reversed(self.list_all_nodes()):
            try:
                self.remove_node(node)
            except RuntimeError as e:
                errors.append(str(e))
        if errors:
            raise RuntimeError("; ".join(errors))


# Config keys of ports set to 0 (any free port) where this rayd has them.
_ZERO_PORT_KEYS = ("node_manager_port", "global_scheduler_port", "raylet_metrics_port", "plasma_metrics_port",
                   "global_scheduler_metrics_port", "redis_shard_metrics_port")

_known_keys: Dict[str, bool] = {}


def _knows_key(key: str) -> bool:
    """Whether this rayd's config has `key` (a newer key is set only where it exists)."""
    if key not in _known_keys:
        out = subprocess.run([_rayd_binary(), "--print-config", "stop"], capture_output=True, text=True, timeout=30)
        _known_keys[key] = any(line.split("=")[0].strip() == key for line in out.stdout.splitlines())
    return _known_keys[key]


def run_driver(cluster: Cluster, node: Node, body: str, timeout: float = 120.0,
               env: Optional[Dict[str, str]] = None) -> "subprocess.CompletedProcess[str]":
    """Runs `body` (Python, with os, ray, sys and time imported) as a driver in a new
    process attached to `node`; returns the finished process (stdout, stderr as text)."""
    program = (
        "import os, ray, sys, time\n"
        f"ray.init(redis_address={cluster.address!r}, node_ip_address={node.address!r}, "
        f"redis_password={cluster.redis_password!r})\n" + body
    )
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
