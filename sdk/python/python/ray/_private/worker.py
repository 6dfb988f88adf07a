"""The process-wide state of a driver or worker, and the core API on top of it:
`init`, `shutdown`, `get`, `put`, `wait`."""

import atexit
import json
import os
import socket
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypeVar, Union, overload

from ray import _raylet
from ray import exceptions
from ray._private import serialization

SCRIPT_MODE = 0
WORKER_MODE = 1
LOCAL_MODE = 2
SILENT_MODE = 3

ObjectID = _raylet.ObjectID

# Arguments whose serialized size is below this travel inside the task spec.
INLINE_ARGUMENT_MAX = 100 * 1024


class Worker:
    """This process's connection to rayd (a driver's, or a worker's)."""

    def __init__(self):
        self.mode: Optional[int] = None
        # The Rust core (`ray._raylet.CoreWorker`) while connected (not in LOCAL_MODE).
        self.core: Any = None
        self.node: Optional[_raylet.LocalNode] = None
        # The `driver_*` temp dir that `init` made for its local node (removed at shutdown).
        self.owned_temp_dir: Optional[str] = None
        self.info: Optional[Dict[str, Any]] = None
        self.lock = threading.RLock()
        # Task-local state of a worker: the GPU and resource IDs of the current task.
        self.resource_ids = {}
        # LOCAL_MODE's object table: ObjectID -> ("value", v) or ("error", exc).
        self.local_objects = {}
        # LOCAL_MODE as Ray 0.5 had it (`driver_mode=ray.LOCAL_MODE`): `f.remote()` returns
        # the value itself; `local_mode=True` is today's (object IDs).
        self.legacy_local_mode = False

    @property
    def connected(self):
        return self.mode is not None

    def check_connected(self):
        if self.mode is None:
            raise exceptions.RaySystemError("ray.init() must be called first")


global_worker = Worker()


# Where a systemd deployment (deploy/ansible) writes the node's configuration.
_NODE_CONFIG = "/etc/rayd/rayd.toml"


def _node_config(required: bool = False) -> Dict[str, Any]:
    """This machine's rayd configuration when a deployment wrote one (`RAYD_CONFIG`, else
    /etc/rayd/rayd.toml): the node's address, its cluster's GCS and password. Empty when
    there is none, or when it may not be read and is not `required`."""
    path = os.environ.get("RAYD_CONFIG", _NODE_CONFIG)
    if sys.version_info < (3, 11):
        return {}
    import tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except PermissionError as e:
        if not required:
            return {}
        raise PermissionError(
            f"{path}: this user may not read the node's rayd configuration ({e.strerror}): on a "
            "node run by systemd, join group `rayd` (`sudo usermod -aG rayd $USER`, then log in "
            "again), or pass the head's address and node_ip_address") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the node's rayd configuration: {e}") from None


def _node_config_of(address):
    """The node's configuration when this machine is a deployed node of the cluster at
    `address`, else empty."""
    config = _node_config()
    redis_address = config.get("redis_address")
    return config if isinstance(redis_address, str) and _same_address(redis_address, address) else {}


def _local_node_state():
    """The record of the node started on this machine with `rayd start` (`node.json`)."""
    temp_dir = os.environ.get("RAYD_TEMP_DIR", "/tmp/rayd")
    path = os.path.join(temp_dir, "node.json")
    with open(path) as f:
        return json.load(f), path


def _auto_address():
    """The GCS of a node started on this machine with `rayd start`, else that of the node
    a deployment configured (/etc/rayd/rayd.toml)."""
    try:
        state, _ = _local_node_state()
        return state["redis_address"]
    except (OSError, KeyError, ValueError) as e:
        started = str(e)
    redis_address = _node_config(required=True).get("redis_address")
    if isinstance(redis_address, str):
        return redis_address
    raise ConnectionError(f"address='auto': no rayd node started on this machine ({started}) and no "
                          f"deployed one ({os.environ.get('RAYD_CONFIG', _NODE_CONFIG)})")


def _read_password_file(path):
    try:
        with open(path) as f:
            password = f.read().strip()
    except OSError as e:
        raise ValueError(f"redis_password_file: cannot read {path}: {e}") from None
    if not password:
        raise ValueError(f"redis_password_file: {path} is empty")
    return password


def _cluster_password(address, redis_password, redis_password_file):
    """The secret to attach to the cluster at `address` with: the one given, else the one
    in the given file, else `RAYD_REDIS_PASSWORD(_FILE)`, else the one of a node of that
    cluster started on this machine (`rayd start`, `ray.init()`); None for an open cluster."""
    if redis_password:
        return redis_password
    redis_password_file = redis_password_file or os.environ.get("RAYD_REDIS_PASSWORD_FILE")
    if redis_password_file:
        return _read_password_file(redis_password_file)
    if os.environ.get("RAYD_REDIS_PASSWORD"):
        return os.environ["RAYD_REDIS_PASSWORD"]
    temp_dir = os.environ.get("RAYD_TEMP_DIR", "/tmp/rayd")
    return _raylet.local_cluster_secret(temp_dir, address)


def _resolve(host):
    """The IP address of a host name (`localhost`), resolved once."""
    try:
        return socket.gethostbyname(host)
    except OSError as e:
        raise ValueError(f"cannot resolve the host name {host!r}: {e}") from None


def _same_address(a, b):
    """Whether two host:port addresses name the same server (`localhost` is 127.0.0.1)."""
    if not a or not b:
        return False
    if a == b:
        return True
    try:
        (host_a, _, port_a), (host_b, _, port_b) = a.rpartition(":"), b.rpartition(":")
        return port_a == port_b and _resolve(host_a.strip("[]")) == _resolve(host_b.strip("[]"))
    except ValueError:
        return False


def _local_ip_towards(address):
    """This machine's address on the way to `address` (host:port): the address its raylet
    registered with when it runs on the same network as the head. For a head on a loopback
    address that is the head's own address: nodes on one machine each have their own
    127.0.0.N (`ray.cluster_utils.Cluster`), and a driver given the head's attaches to it."""
    host, _, port = address.rpartition(":")
    ip = _resolve(host.strip("[]"))
    if ip.startswith("127."):
        return ip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((ip, int(port)))  # UDP: nothing is sent, only a route is chosen
            return s.getsockname()[0]
        except (OSError, ValueError):
            return "127.0.0.1"


def _python_path():
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]


def init(redis_address: Optional[str] = None, num_cpus: Optional[float] = None,
         num_gpus: Optional[float] = None, resources: Optional[Dict[str, float]] = None,
         object_store_memory: Optional[int] = None, node_ip_address: Optional[str] = None,
         object_id_seed: Optional[int] = None, num_workers: Optional[int] = None,
         driver_mode: int = SCRIPT_MODE, redirect_worker_output: bool = False,
         redirect_output: bool = True, ignore_reinit_error: bool = False,
         num_custom_resource: Any = None, num_redis_shards: Optional[int] = None,
         redis_max_clients: Optional[int] = None, plasma_directory: Optional[str] = None,
         huge_pages: bool = False, include_webui: Optional[bool] = None, use_raylet: Optional[bool] = None,
         address: Optional[str] = None, local_mode: bool = False, redis_password: Optional[str] = None,
         _temp_dir: Optional[str] = None, object_spilling_directory: Optional[str] = None,
         _redis_password: Optional[str] = None, redis_password_file: Optional[str] = None,
         **unknown: Any) -> Optional[Dict[str, Any]]:
    """Starts a single-node cluster and connects to it, or attaches to a running cluster."""
    if unknown:
        raise TypeError(f"ray.init() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    worker = global_worker
    with worker.lock:
        if worker.connected:
            if ignore_reinit_error:
                return worker.info
            raise RuntimeError("ray.init() was called twice: call ray.shutdown() first, "
                               "or pass ignore_reinit_error=True")
        if local_mode or driver_mode == LOCAL_MODE:
            worker.mode = LOCAL_MODE
            worker.legacy_local_mode = driver_mode == LOCAL_MODE and not local_mode
            worker.info = {"node_ip_address": "127.0.0.1", "redis_address": None, "local_mode": True}
            atexit.register(shutdown)
            return worker.info
        address = address or redis_address
        if address == "auto":
            address = _auto_address()
        # On a deployed node of this cluster, its configuration names the node's address
        # (where its raylet registered) and the cluster's password.
        deployed = _node_config_of(address) if address else {}
        redis_password = redis_password or _redis_password
        if address:
            if not (redis_password or redis_password_file) and isinstance(deployed.get("redis_password"), str):
                redis_password = deployed["redis_password"]
            redis_password = _cluster_password(address, redis_password, redis_password_file)
        elif redis_password_file:
            redis_password = redis_password or _read_password_file(redis_password_file)
        common = dict(
            object_id_seed=object_id_seed,
            python_path=_python_path(),
            cwd=os.getcwd(),
            redirect_worker_output=bool(redirect_worker_output),
            redis_password=redis_password,
        )
        # The settings that describe the node to start; meaningless when attaching.
        node_settings = {
            "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources,
            "object_store_memory": object_store_memory, "num_workers": num_workers,
            "num_redis_shards": num_redis_shards, "redis_max_clients": redis_max_clients,
            "plasma_directory": plasma_directory, "huge_pages": huge_pages or None,
            "object_spilling_directory": object_spilling_directory,
        }
        if address:
            given = [name for name, value in node_settings.items() if value is not None]
            if given:
                raise ValueError(
                    f"ray.init(address={address!r}) attaches to a running cluster, whose nodes are "
                    f"already configured: remove {', '.join(given)} (set them with `rayd start` on each node)")
            if node_ip_address:
                ip = _resolve(node_ip_address)
            elif isinstance(deployed.get("node_ip_address"), str):
                ip = deployed["node_ip_address"]
            else:
                ip = _local_ip_towards(address)
            raylet_socket = _raylet.find_local_raylet(address, ip, redis_password)
            worker.core = _raylet.CoreWorker(raylet_socket, **common)
        else:
            if resources is not None and ("CPU" in resources or "GPU" in resources):
                raise ValueError("use num_cpus and num_gpus, not resources, for CPUs and GPUs")
            # A temp dir of this driver's own goes when the node does (ray.shutdown()).
            worker.owned_temp_dir = None if _temp_dir else _session_temp_dir()
            settings = {
                **node_settings,
                "node_ip_address": node_ip_address, "redis_password": redis_password,
                "temp_dir": _temp_dir or worker.owned_temp_dir,
                # None: the `include_webui` key (RAYD_INCLUDE_WEBUI), off by default.
                "include_webui": include_webui,
            }
            # Workers import what the driver imports; the daemons come with this package.
            os.environ["RAYD_WORKER_PYTHONPATH"] = os.pathsep.join(_python_path())
            bin_dir = os.path.join(sys.prefix, "bin")
            if os.path.exists(os.path.join(bin_dir, "rayd-raylet")):
                os.environ.setdefault("RAYD_BIN_DIR", bin_dir)
            try:
                worker.node = _raylet.start_local_node(settings)
                worker.core = _raylet.CoreWorker(worker.node.raylet_socket, **common)
            except BaseException:
                if worker.node is not None:
                    worker.node.stop()
                    worker.node = None
                _remove_owned_temp_dir(worker)
                raise
            address = worker.node.redis_address
        worker.mode = SCRIPT_MODE
        worker.info = {
            "redis_address": address,
            "address": address,
            "node_ip_address": worker.core.node_ip_address,
            "raylet_socket_name": worker.node.raylet_socket if worker.node else None,
            "object_store_address": worker.core.plasma_socket,
            "session_dir": worker.node.session_dir if worker.node else None,
            "webui_url": worker.core.webui_url(),
            "node_id": worker.core.node_id.hex(),
        }
        if worker.info["webui_url"]:
            print(f"View the rayd dashboard at {worker.info['webui_url']}", file=sys.stderr)
        atexit.register(shutdown)
        return worker.info


def _session_temp_dir():
    base = os.environ.get("RAYD_TEMP_DIR", "/tmp/rayd")
    os.makedirs(base, exist_ok=True)
    import tempfile
    return tempfile.mkdtemp(prefix="driver_", dir=base)


def _remove_owned_temp_dir(worker):
    if worker.owned_temp_dir is not None:
        import shutil
        shutil.rmtree(worker.owned_temp_dir, ignore_errors=True)
        worker.owned_temp_dir = None


def connect_worker(core):
    """Called in a worker process: this process serves tasks through `core`."""
    global_worker.core = core
    global_worker.mode = WORKER_MODE


def shutdown() -> None:
    """Disconnects, stops what `init` started, and forgets remote functions. Safe twice."""
    worker = global_worker
    with worker.lock:
        if worker.mode is None or worker.mode == WORKER_MODE:
            return
        from ray import actor
        from ray._private import profiling
        actor._holds.forget()
        profiling.stop()
        worker.core = None
        if worker.node is not None:
            worker.node.stop()
            worker.node = None
        _remove_owned_temp_dir(worker)
        worker.mode = None
        worker.legacy_local_mode = False
        worker.info = None
        worker.local_objects.clear()


def is_initialized() -> bool:
    return global_worker.connected


def _check_ids(object_ids, what):
    for object_id in object_ids:
        if not isinstance(object_id, ObjectID):
            raise TypeError(f"{what} takes ObjectIDs (or a list of them), got {type(object_id).__name__}")


def _seconds_to_ms(timeout):
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout}")
    return int(timeout * 1000)


_R = TypeVar("_R")


@overload
def get(object_ids: "ObjectID[_R]", timeout: Optional[float] = None) -> _R: ...


@overload
def get(object_ids: "Sequence[ObjectID[Any]]", timeout: Optional[float] = None) -> List[Any]: ...


def get(object_ids: "Union[ObjectID[Any], Sequence[ObjectID[Any]]]", timeout: Optional[float] = None) -> Any:
    """The value(s) of object ID(s); blocks until they exist.

    `timeout` is in seconds (as in current Ray); `GetTimeoutError` when it passes.
    A task's exception is re-raised as `RayTaskError` (also an instance of its class).
    """
    worker = global_worker
    worker.check_connected()
    if worker.legacy_local_mode:
        return object_ids  # Ray 0.5's LOCAL_MODE: the "IDs" are the values
    single = isinstance(object_ids, ObjectID)
    ids: List[Any] = [object_ids] if isinstance(object_ids, ObjectID) else list(object_ids)
    _check_ids(ids, "ray.get")
    if worker.mode == LOCAL_MODE:
        values = [_local_value(i) for i in ids]
        return values[0] if single else values
    results = worker.core.get(ids, _seconds_to_ms(timeout))
    missing = [i for i, r in zip(ids, results) if r is None]
    if missing:
        raise exceptions.GetTimeoutError(
            f"ray.get timed out after {timeout} s waiting for {len(missing)} of {len(ids)} objects "
            f"(first: {missing[0]!r})")
    values = [serialization.deserialize_object(*r) for r in results]
    return values[0] if single else values


def _local_value(object_id):
    kind, value = global_worker.local_objects[object_id]
    if kind == "error":
        raise value.as_instanceof_cause() if isinstance(value, exceptions.RayTaskError) else value
    return value


def put(value: _R) -> "ObjectID[_R]":
    """Stores a value in the object store; returns its ObjectID."""
    worker = global_worker
    worker.check_connected()
    if isinstance(value, ObjectID):
        raise TypeError("ray.put of an ObjectID is not allowed: pass the ObjectID itself")
    if worker.legacy_local_mode:
        return value  # type: ignore[return-value]  # Ray 0.5's LOCAL_MODE: the value is its own ID
    if worker.mode == LOCAL_MODE:
        object_id = ObjectID.from_random()
        worker.local_objects[object_id] = ("value", value)
        return object_id
    data, buffers = serialization.serialize(value)
    return worker.core.put(serialization.META_PICKLE5, data, buffers)


def wait_timeout_ms(timeout):
    """The timeout rule of `ray.wait`: an int is milliseconds (the seed's API), a float is
    seconds (current Ray's)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be an int (milliseconds) or a float (seconds), got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout}")
    return int(timeout) if isinstance(timeout, int) else int(timeout * 1000)


def wait(object_ids: "Sequence[ObjectID[Any]]", num_returns: int = 1, timeout: Union[int, float, None] = None
         ) -> "Tuple[List[ObjectID[Any]], List[ObjectID[Any]]]":
    """`(ready, not_ready)`: waits until `num_returns` objects are ready or `timeout`
    passes (int: milliseconds, float: seconds). Order is preserved; IDs must be unique."""
    worker = global_worker
    worker.check_connected()
    if isinstance(object_ids, ObjectID):
        raise TypeError("ray.wait takes a list of ObjectIDs, not a single one")
    ids = list(object_ids)
    if worker.legacy_local_mode:
        return ids[:num_returns], ids[num_returns:]
    if not ids:
        return [], []
    _check_ids(ids, "ray.wait")
    if len(set(ids)) != len(ids):
        raise ValueError("ray.wait: the ObjectIDs must be unique")
    if not 0 <= num_returns <= len(ids):
        raise ValueError(f"ray.wait: num_returns={num_returns} must be between 0 and {len(ids)}")
    timeout_ms = wait_timeout_ms(timeout)
    if worker.mode == LOCAL_MODE:
        flags = [True] * len(ids)
    else:
        flags = worker.core.wait(ids, num_returns, timeout_ms) if ids else []
    ready: "List[ObjectID[Any]]" = []
    not_ready: "List[ObjectID[Any]]" = []
    for object_id, flag in zip(ids, flags):
        (ready if flag and len(ready) < num_returns else not_ready).append(object_id)
    return ready, not_ready

