"""`@ray.remote` on a class: actors.

`Cls.remote(*args)` creates the actor (its constructor runs in a worker process of its
own) and returns a handle at once; `handle.method.remote(*args)` returns ObjectID(s). The
calls made through one handle run in the order they were made. Handles can be passed to
tasks and other actors (each copy numbers its own calls).
"""

import os

from ray import exceptions
from ray._private import worker as _worker
from ray.remote_function import _Remote, _encode_argument, check_resource_options

_ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "max_restarts", "name", "memory"}


def _method_returns(cls):
    """Method name -> num_returns, from @ray.method annotations (default 1)."""
    returns = {}
    for name in dir(cls):
        member = getattr(cls, name, None)
        if callable(member) and not name.startswith("__"):
            annotated = getattr(member, "__ray_num_returns__", None)
            returns[name] = 1 if annotated is None else annotated
    return returns


class ActorClass(_Remote):
    """A class whose instances live in workers: `Cls.remote(...)` makes one."""

    _kind = "actor class"
    _direct = "instantiated"

    def __init__(self, cls, options):
        self._class = cls
        self._methods = _method_returns(cls)
        super().__init__(cls, options)

    def _check_options(self, options):
        unknown = set(options) - _ACTOR_OPTIONS
        if unknown:
            raise ValueError(f"unknown actor options: {', '.join(sorted(unknown))}")
        check_resource_options(options)
        return dict(options)

    def _remote(self, args, kwargs, options):
        worker = _worker.global_worker
        worker.check_connected()
        if worker.mode == _worker.LOCAL_MODE:
            return _LocalActorHandle(self._class(*args, **kwargs), self._methods)
        core = worker.core
        class_id = self._definition.export(core)
        resources = dict(options.get("resources") or {})
        if options.get("num_cpus"):
            resources["CPU"] = float(options["num_cpus"])
        if options.get("num_gpus"):
            resources["GPU"] = float(options["num_gpus"])
        # The seed's rule: an actor that names resources holds them for life; one that
        # doesn't holds none, and each of its method calls takes one CPU while it runs.
        holds = any(options.get(k) is not None for k in ("num_cpus", "num_gpus", "resources"))
        encoded = [_encode_argument(core, v) for v in list(args) + list(kwargs.values())]
        actor_id = core.create_actor(class_id, self._name, encoded, list(kwargs.keys()),
                                     resources, holds, int(options.get("max_restarts", 0)))
        return ActorHandle(actor_id, class_id, self._name, self._methods)


class ActorHandle:
    """A reference to an actor: `handle.method.remote(...)` calls it."""

    def __init__(self, actor_id, class_id, class_name, methods):
        self._actor_id = actor_id
        self._class_id = class_id
        self._class_name = class_name
        self._methods = methods
        self._handle_id = os.urandom(20)
        self._counter = 0

    def __getattr__(self, name):
        methods = self.__dict__.get("_methods", {})
        if name not in methods:
            raise AttributeError(f"actor {self.__dict__.get('_class_name')} has no method {name!r}")
        # Kept, so that the next `handle.name` is a plain attribute lookup.
        method = self.__dict__[name] = ActorMethod(self, name, methods[name])
        return method

    def __repr__(self):
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()})"

    def __reduce__(self):
        # A copy of a handle numbers its own calls: it gets a new handle ID when rebuilt.
        return (ActorHandle, (self._actor_id, self._class_id, self._class_name, self._methods))

    def _call(self, method, args, kwargs, num_returns):
        worker = _worker.global_worker
        worker.check_connected()
        core = worker.core
        values = list(args) + list(kwargs.values()) if kwargs else args
        encoded = [_encode_argument(core, v) for v in values]
        self._counter += 1
        ids = core.submit_actor_task(self._actor_id, self._handle_id, self._counter, self._class_id,
                                     method, encoded, list(kwargs.keys()), num_returns)
        if num_returns == 1:
            return ids[0]
        return None if num_returns == 0 else ids


class ActorMethod:
    """`handle.method`: `.remote(*args)` calls it; `.options(num_returns=k)` per call."""

    def __init__(self, handle, name, num_returns):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def remote(self, *args, **kwargs):
        return self._handle._call(self._name, args, kwargs, self._num_returns)

    def options(self, num_returns=None, num_return_vals=None):
        count = num_returns if num_returns is not None else num_return_vals
        return ActorMethod(self._handle, self._name, self._num_returns if count is None else count)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._name} cannot be called directly: use .{self._name}.remote(...)")


class _LocalActorHandle:
    """LOCAL_MODE: the actor is an object in the driver; calls run at once."""

    def __init__(self, instance, methods):
        self._instance = instance
        self._methods = methods

    def __getattr__(self, name):
        from ray.remote_function import _run_locally
        function = getattr(self.__dict__["_instance"], name)
        num_returns = self.__dict__["_methods"].get(name, 1)

        class _Method:
            def remote(self, *args, **kwargs):
                return _run_locally(function, name, args, kwargs, num_returns)

        return _Method()


def kill(handle):
    """Kills the actor now: no restart; its pending and later calls raise RayActorError."""
    worker = _worker.global_worker
    worker.check_connected()
    if isinstance(handle, _LocalActorHandle):
        return
    if not isinstance(handle, ActorHandle):
        raise TypeError(f"ray.kill takes an actor handle, got {type(handle).__name__}")
    worker.core.kill_actor(handle._actor_id)


__all__ = ["ActorClass", "ActorHandle", "kill", "exceptions"]
