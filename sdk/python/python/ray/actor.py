"""`@ray.remote` on a class: actors.

`Cls.remote(*args)` creates the actor (its constructor runs in a worker process of its
own) and returns a handle at once; `handle.method.remote(*args)` returns ObjectID(s). The
calls made through one handle run in the order they were made. Handles can be passed to
tasks and other actors (each copy numbers its own calls).

An actor lives while a handle to it does: when the last handle in every process is gone
(and no pickled copy waits to be unpickled), the process that dropped it kills the actor,
which frees its resources (see `_holds`).
"""

import inspect
import os
import threading
import uuid

from ray import exceptions
from ray._private import profiling
from ray._private import worker as _worker
from ray.remote_function import CallCheck, _Remote, _encode_argument, check_resource_options

_ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "max_restarts", "max_reconstructions",
                  "name", "memory", "checkpoint_interval"}


def find_method(cls, name):
    """The method `name` of an actor class, looked up on the class (as Ray does), so that an
    instance attribute of the same name does not hide it."""
    for klass in inspect.getmro(cls):
        if name in vars(klass):
            return vars(klass)[name]
    raise AttributeError(f"actor class {cls.__name__} has no method {name!r}")


def bound_method(instance, name):
    """The method `name` of `instance`, found on its class, bound to it."""
    cls = type(instance)
    return find_method(cls, name).__get__(instance, cls)


def _method_info(cls):
    """Method name -> (num_returns, CallCheck), from @ray.method annotations (default 1)."""
    info = {}
    for name in dir(cls):
        if name.startswith("__"):
            continue
        member = find_method(cls, name)
        function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        if not callable(function):
            continue
        annotated = getattr(function, "__ray_num_returns__", None)
        check = CallCheck(function, f"{cls.__qualname__}.{name}",
                          skip_first=not isinstance(member, staticmethod))
        info[name] = (1 if annotated is None else annotated, check)
    return info


class _Holds:
    """Which actors this process holds handles to, and the cluster-wide count.

    Each process counts its own handles per actor. The GCS keeps, per actor, one hold for
    each process that has published its hold (by pickling a handle, or by unpickling one)
    plus one per pickled copy not unpickled yet (a token in a set). The creator's hold is
    published only once a handle leaves the process: an actor that never left its creator
    is killed without a GCS round trip. When a process's last handle goes, it takes its hold
    back; whoever takes the last hold kills the actor."""

    def __init__(self):
        # Reentrant: a garbage collection inside a locked block may drop another handle.
        self.lock = threading.RLock()
        # actor ID -> [live handles here, whether this process's hold is in the GCS]
        self.local = {}

    @staticmethod
    def _keys(actor_id):
        return (f"rayd:actor_holds:{actor_id.hex()}".encode(),
                f"rayd:actor_in_flight:{actor_id.hex()}".encode())

    def _command(self, name, *args, shard):
        from ray._private import gcs
        return gcs.command(name, *args, shard=shard)

    def created(self, actor_id):
        with self.lock:
            self.local[actor_id] = [1, False]

    def pickled(self, actor_id, permanent=False):
        """A copy of a handle leaves this process: its hold (and ours) go to the GCS.
        Returns the copy's token (None: a permanent hold, e.g. a registered name)."""
        holds, in_flight = self._keys(actor_id)
        with self.lock:
            entry = self.local.setdefault(actor_id, [0, True])
            publish = not entry[1] and entry[0] > 0
            entry[1] = entry[1] or publish
        token = None if permanent else uuid.uuid4().hex
        if token is not None:
            self._command("SADD", in_flight, token, shard=actor_id)
        self._command("INCRBY", holds, 2 if publish else 1, shard=actor_id)
        return token

    def unpickled(self, actor_id, token):
        """A copy of a handle arrived here."""
        holds, in_flight = self._keys(actor_id)
        with self.lock:
            entry = self.local.setdefault(actor_id, [0, False])
            entry[0] += 1
            first = not entry[1]
            entry[1] = True
        took = token is not None and self._command("SREM", in_flight, token, shard=actor_id) == 1
        if first and not took:
            self._command("INCR", holds, shard=actor_id)
        elif took and not first:
            # This process holds the actor already: the copy's hold is not needed.
            self._release(actor_id)

    def dropped(self, actor_id):
        """A handle here was garbage collected."""
        with self.lock:
            entry = self.local.get(actor_id)
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] > 0:
                return
            del self.local[actor_id]
            published = entry[1]
        if published:
            self._release(actor_id)
        else:
            _kill_quietly(actor_id)

    def _release(self, actor_id):
        """Takes one hold back from the GCS; the last one kills the actor."""
        holds, _ = self._keys(actor_id)
        if self._command("DECR", holds, shard=actor_id) <= 0:
            _kill_quietly(actor_id)

    def forget(self):
        """`ray.shutdown()`: the handles of this session no longer count."""
        with self.lock:
            self.local.clear()


_holds = _Holds()


def _kill_quietly(actor_id):
    worker = _worker.global_worker
    if worker.core is not None:
        worker.core.kill_actor(actor_id)


class ActorClass(_Remote):
    """A class whose instances live in workers: `Cls.remote(...)` makes one."""

    _kind = "actor class"
    _direct = "instantiated"

    def __init__(self, cls, options):
        self._class = cls
        self._methods = _method_info(cls)
        super().__init__(cls, options)

    def _check_options(self, options):
        unknown = set(options) - _ACTOR_OPTIONS
        if unknown:
            raise ValueError(f"unknown actor options: {', '.join(sorted(unknown))}")
        check_resource_options(options)
        options = dict(options)
        if "max_reconstructions" in options:  # the seed's name
            options.setdefault("max_restarts", options.pop("max_reconstructions"))
        interval = options.get("checkpoint_interval")
        if interval is not None and (not isinstance(interval, int) or interval < 1):
            raise ValueError(f"checkpoint_interval must be a positive int, got {interval!r}")
        name = options.get("name")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"an actor's name must be a str, got {type(name).__name__}")
        return options

    def _remote(self, args, kwargs, options):
        worker = _worker.global_worker
        worker.check_connected()
        if worker.mode == _worker.LOCAL_MODE:
            return _LocalActorHandle(self._class(*args, **kwargs), self._methods)
        core = worker.core
        name = options.get("name")
        if name is not None:
            from ray.experimental import named_actors
            named_actors.check_free(name)
        class_id = self._definition_for(options).export(core)
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
        _holds.created(actor_id)
        handle = ActorHandle(actor_id, class_id, self._name, self._methods)
        if name is not None:
            from ray.experimental import named_actors
            try:
                named_actors.register_actor(name, handle)
            except BaseException:
                # Another driver took the name since check_free: the caller gets no handle,
                # so the actor just made must not outlive this call.
                _kill_quietly(actor_id)
                raise
        return handle

    def _definition_for(self, options):
        """The exported class: with a checkpoint interval, the class and the interval."""
        interval = options.get("checkpoint_interval")
        if interval is None:
            return self._definition
        from ray.remote_function import Definition
        definitions = self.__dict__.setdefault("_checkpointed", {})
        if interval not in definitions:
            definitions[interval] = Definition(CheckpointedClass(self._class, interval), self._name)
        return definitions[interval]


class CheckpointedClass:
    """An actor class with Ray 0.5's checkpointing: every `interval` method calls the worker
    stores `__ray_save__()`, and a restarted actor gets it back through `__ray_restore__`."""

    def __init__(self, cls, interval):
        self.cls = cls
        self.interval = interval


class ActorHandle:
    """A reference to an actor: `handle.method.remote(...)` calls it."""

    def __init__(self, actor_id, class_id, class_name, methods):
        self._actor_id = actor_id
        self._class_id = class_id
        self._class_name = class_name
        self._methods = methods
        self._handle_id = os.urandom(20)
        self._counter = 0
        # The connection this handle belongs to: it counts in `_holds` while that lasts.
        self._core = _worker.global_worker.core

    def __getattr__(self, name):
        methods = self.__dict__.get("_methods", {})
        if name not in methods:
            raise AttributeError(f"actor {self.__dict__.get('_class_name')} has no method {name!r}")
        # Not kept in the handle: a method that referred back to it would make a cycle,
        # and the handle would outlive `del handle` until the next garbage collection.
        return ActorMethod(self, name, methods[name])

    def __repr__(self):
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()})"

    def __del__(self):
        core = self.__dict__.get("_core")
        if core is not None and core is _worker.global_worker.core:
            try:
                _holds.dropped(self._actor_id)
            except Exception:  # noqa: BLE001 - at exit, or the cluster is gone: nothing to free
                pass

    def _serialize(self, permanent=False):
        token = _holds.pickled(self._actor_id, permanent) if self._core is not None else None
        return (_rebuild_handle, (self._actor_id, self._class_id, self._class_name, self._methods, token))

    def _serialize_without_hold(self):
        """A permanent copy (no token) whose hold the caller takes: `_holds.pickled(id, True)`."""
        return (_rebuild_handle, (self._actor_id, self._class_id, self._class_name, self._methods, None))

    def __reduce__(self):
        # A copy of a handle numbers its own calls: it gets a new handle ID when rebuilt.
        return self._serialize()

    def _call(self, method, args, kwargs, num_returns, check):
        check(args, kwargs)
        worker = _worker.global_worker
        worker.check_connected()
        core = worker.core
        values = list(args) + list(kwargs.values()) if kwargs else args
        encoded = [_encode_argument(core, v) for v in values]
        self._counter += 1
        ids = core.submit_actor_task(self._actor_id, self._handle_id, self._counter, self._class_id,
                                     method, encoded, list(kwargs.keys()), num_returns)
        if ids:
            profiling.record_submit(ids[0], method)
        if num_returns == 1:
            return ids[0]
        return None if num_returns == 0 else ids


class ActorMethod:
    """`handle.method`: `.remote(*args)` calls it; `.options(num_returns=k)` per call."""

    def __init__(self, handle, name, info):
        self._handle = handle
        self._name = name
        self._num_returns, self._check = info

    def remote(self, *args, **kwargs):
        return self._handle._call(self._name, args, kwargs, self._num_returns, self._check)

    def options(self, num_returns=None, num_return_vals=None):
        count = num_returns if num_returns is not None else num_return_vals
        return ActorMethod(self._handle, self._name,
                           (self._num_returns if count is None else count, self._check))

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._name} cannot be called directly: use .{self._name}.remote(...)")


class _LocalActorHandle:
    """LOCAL_MODE: the actor is an object in the driver; calls run at once."""

    def __init__(self, instance, methods):
        self._instance = instance
        self._methods = methods

    def __getattr__(self, name):
        from ray.remote_function import _run_locally
        methods = self.__dict__["_methods"]
        if name not in methods:
            raise AttributeError(f"actor {type(self._instance).__name__} has no method {name!r}")
        function = bound_method(self.__dict__["_instance"], name)
        num_returns, check = methods[name]

        class _Method:
            def remote(self, *args, **kwargs):
                check(args, kwargs)
                return _run_locally(function, name, args, kwargs, num_returns)

        return _Method()


def _rebuild_handle(actor_id, class_id, class_name, methods, token=None):
    handle = ActorHandle(actor_id, class_id, class_name, methods)
    if handle._core is not None:
        _holds.unpickled(actor_id, token)
    return handle


def kill(handle: "ActorHandle") -> None:
    """Kills the actor now: no restart; its pending and later calls raise RayActorError."""
    worker = _worker.global_worker
    worker.check_connected()
    if isinstance(handle, _LocalActorHandle):
        return
    if not isinstance(handle, ActorHandle):
        raise TypeError(f"ray.kill takes an actor handle, got {type(handle).__name__}")
    worker.core.kill_actor(handle._actor_id)


__all__ = ["ActorClass", "ActorHandle", "kill", "exceptions"]
