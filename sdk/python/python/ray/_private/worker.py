"""The process-wide state of a driver or worker, and the core API on top of it:
`init`, `shutdown`, `get`, `put`, `wait`."""

import atexit
import json
import os
import sys
import threading

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
        self.mode = None
        self.core = None
        self.node = None
        self.info = None
        self.lock = threading.RLock()
        # Task-local state of a worker: the GPU and resource IDs of the current task.
        self.resource_ids = {}
        # LOCAL_MODE's object table: ObjectID -> ("value", v) or ("error", exc).
        self.local_objects = {}

    @property
    def connected(self):
        return self.mode is not None

    def check_connected(self):
        if self.mode is None:
            raise exceptions.RaySystemError("ray.init() must be called first")


global_worker = Worker()


def _auto_address():
    """The GCS of a node started on this machine with `rayd start`."""
    temp_dir = os.environ.get("RAYD_TEMP_DIR", "/tmp/rayd")
    path = os.path.join(temp_dir, "node.json")
    try:
        with open(path) as f:
            return json.load(f)["redis_address"]
    except (OSError, KeyError, ValueError) as e:
        raise ConnectionError(f"address='auto': no rayd node started on this machine ({path}: {e})") from None


def _python_path():
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]


def init(redis_address=None, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
         node_ip_address=None, object_id_seed=None, num_workers=None, driver_mode=SCRIPT_MODE,
         redirect_worker_output=False, redirect_output=True, ignore_reinit_error=False,
         num_custom_resource=None, num_redis_shards=None, redis_max_clients=None, plasma_directory=None,
         huge_pages=False, include_webui=True, use_raylet=None, address=None, local_mode=False,
         redis_password=None, _temp_dir=None, object_spilling_directory=None, **unknown):
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
            worker.info = {"node_ip_address": "127.0.0.1", "redis_address": None, "local_mode": True}
            atexit.register(shutdown)
            return worker.info
        address = address or redis_address
        if address == "auto":
            address = _auto_address()
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
            ip = node_ip_address or "127.0.0.1"
            socket = _raylet.find_local_raylet(address, ip, redis_password)
            worker.core = _raylet.CoreWorker(socket, **common)
        else:
            if resources is not None and ("CPU" in resources or "GPU" in resources):
                raise ValueError("use num_cpus and num_gpus, not resources, for CPUs and GPUs")
            settings = {
                **node_settings,
                "node_ip_address": node_ip_address, "redis_password": redis_password,
                "temp_dir": _temp_dir or _session_temp_dir(),
            }
            # Workers import what the driver imports; the daemons come with this package.
            os.environ["RAYD_WORKER_PYTHONPATH"] = os.pathsep.join(_python_path())
            bin_dir = os.path.join(sys.prefix, "bin")
            if os.path.exists(os.path.join(bin_dir, "rayd-raylet")):
                os.environ.setdefault("RAYD_BIN_DIR", bin_dir)
            worker.node = _raylet.start_local_node(settings)
            try:
                worker.core = _raylet.CoreWorker(worker.node.raylet_socket, **common)
            except BaseException:
                worker.node.stop()
                worker.node = None
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
            "webui_url": None,
            "node_id": worker.core.node_id.hex(),
        }
        atexit.register(shutdown)
        return worker.info


def _session_temp_dir():
    base = os.environ.get("RAYD_TEMP_DIR", "/tmp/rayd")
    os.makedirs(base, exist_ok=True)
    import tempfile
    return tempfile.mkdtemp(prefix="driver_", dir=base)


def connect_worker(core):
    """Called in a worker process: this process serves tasks through `core`."""
    global_worker.core = core
    global_worker.mode = WORKER_MODE


def shutdown():
    """Disconnects, stops what `init` started, and forgets remote functions. Safe twice."""
    worker = global_worker
    with worker.lock:
        if worker.mode is None or worker.mode == WORKER_MODE:
            return
        worker.core = None
        if worker.node is not None:
            worker.node.stop()
            worker.node = None
        worker.mode = None
        worker.info = None
        worker.local_objects.clear()


def is_initialized():
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


def get(object_ids, timeout=None):
    """The value(s) of object ID(s); blocks until they exist.

    `timeout` is in seconds (as in current Ray); `GetTimeoutError` when it passes.
    A task's exception is re-raised as `RayTaskError` (also an instance of its class).
    """
    worker = global_worker
    worker.check_connected()
    single = isinstance(object_ids, ObjectID)
    ids = [object_ids] if single else list(object_ids)
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


def put(value):
    """Stores a value in the object store; returns its ObjectID."""
    worker = global_worker
    worker.check_connected()
    if isinstance(value, ObjectID):
        raise TypeError("ray.put of an ObjectID is not allowed: pass the ObjectID itself")
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


def wait(object_ids, num_returns=1, timeout=None):
    """`(ready, not_ready)`: waits until `num_returns` objects are ready or `timeout`
    passes (int: milliseconds, float: seconds). Order is preserved; IDs must be unique."""
    worker = global_worker
    worker.check_connected()
    if isinstance(object_ids, ObjectID):
        raise TypeError("ray.wait takes a list of ObjectIDs, not a single one")
    ids = list(object_ids)
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
    ready, not_ready = [], []
    for object_id, flag in zip(ids, flags):
        (ready if flag and len(ready) < num_returns else not_ready).append(object_id)
    return ready, not_ready

