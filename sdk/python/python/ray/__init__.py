"""rayd's Python SDK: Ray's API (`import ray`) on the rayd daemons.

    import ray
    ray.init()

    @ray.remote
    def add2(a, b):
        return a + b

    ray.get(add2.remote(1, 2))  # 3
"""

import functools as _functools
import os as _os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

# Before the extension loads: its allocator (mimalloc) would otherwise commit its first
# arena whole, 8 MiB of resident memory in every driver and worker.
_os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")

from ray import exceptions
from ray._private.worker import (
    LOCAL_MODE,
    SCRIPT_MODE,
    SILENT_MODE,
    WORKER_MODE,
    ObjectID,
    get,
    init,
    is_initialized,
    put,
    shutdown,
    wait,
)
from ray._private import worker as _worker
from ray._private.custom_serializers import register_custom_serializer
from ray._private.profiling import profile
from ray._private.state import error_info, global_state, timeline
from ray.actor import ActorClass, ActorHandle, kill
from ray.experimental.named_actors import get_actor
from ray.remote_function import RemoteFunction
from ray import experimental, internal

__version__ = "0.1.0"

# Current Ray's name for ObjectID.
ObjectRef = ObjectID


def get_webui_url() -> Optional[str]:
    """The dashboard's URL (`ray.init(include_webui=True)`, `rayd start --include-webui`),
    or None when the cluster runs none."""
    _worker.global_worker.check_connected()
    return (_worker.global_worker.info or {}).get("webui_url")


def connect(address_info: Union[str, Dict[str, Any]], **kwargs: Any) -> Optional[Dict[str, Any]]:
    """Ray 0.5's attach: connects this driver to the cluster that `address_info` (what
    `ray.init()` returned, or a "host:port" address) describes; same as `ray.init(redis_address=...)`."""
    address = address_info if isinstance(address_info, str) else address_info["redis_address"]
    return init(redis_address=address, **kwargs)


def disconnect() -> None:
    """Ray 0.5's spelling of `ray.shutdown()`: disconnects, and stops what `ray.init()` started."""
    shutdown()


def remote(*args: Any, **kwargs: Any) -> Any:
    """Makes a function a remote function (or a class an actor class).

    `@ray.remote` or `@ray.remote(num_returns=2, num_cpus=1, num_gpus=0, resources={...},
    max_calls=0, max_retries=3)`; `num_return_vals` is the seed's name for `num_returns`.
    """
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@ray.remote takes keyword arguments only, e.g. @ray.remote(num_cpus=2)")
    return _functools.partial(_make_remote, options=kwargs)


def _make_remote(function_or_class, options):
    if isinstance(function_or_class, type):
        return ActorClass(function_or_class, options)
    return RemoteFunction(function_or_class, options)


def method(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Annotates an actor method: `@ray.method(num_returns=2)` (or `num_return_vals`)."""
    num_returns = kwargs.pop("num_returns", kwargs.pop("num_return_vals", None))
    if args or kwargs:
        raise TypeError("@ray.method takes only num_returns (or num_return_vals)")

    def annotate(function):
        function.__ray_num_returns__ = num_returns
        return function

    return annotate


def get_gpu_ids() -> List[Any]:
    """The GPUs reserved for the current task (also in CUDA_VISIBLE_DEVICES)."""
    return [i for i, _ in _worker.global_worker.resource_ids.get("GPU", [])]


def get_resource_ids() -> Dict[str, List[Tuple[Any, float]]]:
    """Resource name -> [(id, fraction)] reserved for the current task."""
    return {name: list(ids) for name, ids in _worker.global_worker.resource_ids.items()}


def nodes() -> List[Dict[str, Any]]:
    """The cluster's nodes, as dicts."""
    _worker.global_worker.check_connected()
    core = _worker.global_worker.core
    return core.nodes() if core is not None else []


def _sum_resources(key):
    total: "dict[str, float]" = {}
    for node in nodes():
        if node["Alive"]:
            for name, amount in node[key].items():
                total[name] = total.get(name, 0.0) + amount
    return total


def cluster_resources() -> Dict[str, float]:
    """Resource name -> total over the alive nodes."""
    return _sum_resources("Resources")


def available_resources() -> Dict[str, float]:
    """Resource name -> amount free over the alive nodes (as of their last heartbeat)."""
    return _sum_resources("AvailableResources")


__all__ = [
    "LOCAL_MODE", "SCRIPT_MODE", "SILENT_MODE", "WORKER_MODE", "ObjectID", "ObjectRef",
    "available_resources", "cluster_resources", "connect", "disconnect", "error_info",
    "exceptions", "experimental", "get", "get_actor", "get_gpu_ids", "get_resource_ids",
    "get_webui_url", "global_state", "init", "internal", "is_initialized", "kill", "method",
    "nodes", "profile", "put", "register_custom_serializer", "remote", "shutdown", "timeline",
    "wait",
]
