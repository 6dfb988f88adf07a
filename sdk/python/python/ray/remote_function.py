"""`@ray.remote` on a function: a handle whose `.remote()` submits a task."""

import inspect
import warnings

from ray import exceptions
from ray._private import profiling
from ray._private import serialization
from ray._private import worker as _worker

DEFAULT_MAX_RETRIES = 3

# A pickled function or class larger than this is reported (`ray.error_info()`), as Ray did.
FUNCTION_SIZE_WARNING = 10 * 2**20

_OPTION_NAMES = {"num_returns", "num_return_vals", "num_cpus", "num_gpus", "resources",
                 "max_calls", "max_retries", "memory", "name"}


class Definition:
    """A function or actor class pickled once (by value), with its ID. `export` is cheap
    after the first time: the core writes a definition to the GCS once per connection."""

    def __init__(self, obj, name):
        self._obj = obj
        self.name = name
        self._pickled = None
        self.id = None

    def export(self, core):
        """Makes sure `core`'s cluster knows the definition; returns its ID."""
        if self._pickled is None:
            from ray import _raylet
            from ray._private import gcs
            try:
                pickled = serialization.dumps_function(self._obj)
            except Exception as e:
                message = f"cannot pickle {self.name}: {type(e).__name__}: {e}"
                gcs.push_error_quietly(core.job_id, "pickle", message, core=core)
                raise TypeError(message) from e
            if len(pickled) > FUNCTION_SIZE_WARNING:
                message = (f"{self.name} is {len(pickled) / 2**20:.1f} MiB pickled: it is large, "
                           "probably from a big value it refers to; pass that with ray.put instead")
                gcs.push_error_quietly(core.job_id, "function_too_large", message, core=core)
                warnings.warn(message, stacklevel=4)
            self._pickled = pickled
            self.id = _raylet.function_id(self._pickled)
        core.export_function(self.id, self.name, self._pickled)
        return self.id


def _normalize(options):
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise ValueError(f"unknown remote function options: {', '.join(sorted(unknown))}")
    options = dict(options)
    if "num_return_vals" in options:
        options.setdefault("num_returns", options.pop("num_return_vals"))
    for name in ("num_returns", "max_calls", "max_retries"):
        value = options.get(name)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    check_resource_options(options)
    return options


def check_resource_options(options):
    """Refuses negative or non-numeric CPU, GPU and custom resource amounts."""
    for name in ("num_cpus", "num_gpus"):
        value = options.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    resources = options.get("resources")
    if resources is not None:
        if "CPU" in resources or "GPU" in resources:
            raise ValueError("use num_cpus and num_gpus, not resources, for CPUs and GPUs")
        for key, value in resources.items():
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"resource {key!r} must be a non-negative number, got {value!r}")


class _Default:
    """Stands for a parameter's default value in a `CallCheck` (the value itself may not
    pickle, and only its presence matters)."""

    def __repr__(self):
        return "<default>"


class CallCheck:
    """Checks a call against a signature when it is made (`.remote()`), as a direct call
    would: a `TypeError` in the caller rather than a task error at `ray.get`. Picklable
    (defaults and annotations are dropped), so copies of actor handles check too."""

    def __init__(self, function, name, skip_first=False):
        self.name = name
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # builtins without a signature: nothing to check
            self.signature = None
            return
        parameters = list(signature.parameters.values())
        if skip_first and parameters and parameters[0].kind in (
                inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            parameters = parameters[1:]
        parameters = [p.replace(annotation=inspect.Parameter.empty,
                                default=inspect.Parameter.empty if p.default is inspect.Parameter.empty
                                else _Default()) for p in parameters]
        self.signature = inspect.Signature(parameters)
        # The common case, checked without building a binding: positional arguments only,
        # to a function without *args or keyword-only parameters.
        simple = all(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                     for p in parameters)
        self.positional = (sum(p.default is inspect.Parameter.empty for p in parameters),
                           len(parameters)) if simple else None

    def __call__(self, args, kwargs):
        if self.signature is None:
            return
        if not kwargs and self.positional is not None and \
                self.positional[0] <= len(args) <= self.positional[1]:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}{self.signature}: {e}") from None


class _Remote:
    """What remote functions and actor classes share: `.remote(...)`, `.options(...)`, and
    refusing a direct call. A subclass checks options (`_check_options`) and submits
    (`_remote`)."""

    _kind = "remote function"
    _direct = "called"

    def __init__(self, target, options):
        self._name = f"{target.__module__}.{target.__qualname__}"
        # A class's signature is its constructor's, without `self`.
        self._check_call = CallCheck(target, self._name)
        self._options = self._check_options(options)
        self._definition = Definition(target, self._name)
        self.__doc__ = target.__doc__
        self.__name__ = target.__name__

    def _check_options(self, options):
        raise NotImplementedError

    def _remote(self, args, kwargs, options):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self._kind} {self._name} cannot be {self._direct} directly: "
                        f"use {self.__name__}.remote(...) instead of {self.__name__}(...)")

    def remote(self, *args, **kwargs):
        """Submits with the decorator's options; returns ObjectID(s) or a handle at once.
        The arguments are checked against the signature now (`TypeError`)."""
        self._check_call(args, kwargs)
        return self._remote(args, kwargs, self._options)

    def options(self, **options):
        """A handle whose `.remote()` uses these options (over the decorator's)."""
        merged = {**self._options, **self._check_options(options)}
        parent = self

        class _Options:
            def remote(self, *args, **kwargs):
                parent._check_call(args, kwargs)
                return parent._remote(args, kwargs, merged)

        return _Options()


class RemoteFunction(_Remote):
    """A function that runs as a task: `f.remote(*args)` returns ObjectID(s) at once."""

    def __init__(self, function, options):
        self._function = function
        super().__init__(function, options)

    def _check_options(self, options):
        return _normalize(options)

    def _remote(self, args, kwargs, options):
        worker = _worker.global_worker
        worker.check_connected()
        num_returns = options.get("num_returns", 1)
        if worker.mode == _worker.LOCAL_MODE:
            return _run_locally(self._function, self._name, args, kwargs, num_returns)
        core = worker.core
        function_id = self._definition.export(core)
        values = list(args) + list(kwargs.values())
        encoded = [_encode_argument(core, value) for value in values]
        resources = dict(options.get("resources") or {})
        num_cpus = options.get("num_cpus", 1)
        if num_cpus:
            resources["CPU"] = float(num_cpus)
        num_gpus = options.get("num_gpus", 0)
        if num_gpus:
            resources["GPU"] = float(num_gpus)
        ids = core.submit_task(
            function_id, self._name, encoded, list(kwargs.keys()), num_returns, resources,
            options.get("max_retries", DEFAULT_MAX_RETRIES), options.get("max_calls") or 0)
        if ids:
            profiling.record_submit(ids[0], self._name)
        if num_returns == 1:
            return ids[0]
        return None if num_returns == 0 else ids


def _encode_argument(core, value):
    """An ObjectID stays one; a small value is inlined; a large one is put in the store."""
    if isinstance(value, _worker.ObjectID):
        return value
    data, buffers = serialization.serialize(value)
    if len(data) + sum(len(b) for b in buffers) < _worker.INLINE_ARGUMENT_MAX:
        from ray import _raylet
        return _raylet.serialize_inline(data, buffers)
    return core.put(serialization.META_PICKLE5, data, buffers)


def _run_locally(function, name, args, kwargs, num_returns):
    """LOCAL_MODE: runs the task now, in this process. With `ray.init(local_mode=True)` its
    results are recorded under object IDs (current Ray); with
    `ray.init(driver_mode=ray.LOCAL_MODE)` they are returned as they are and its exception
    is raised here (Ray 0.5)."""
    worker = _worker.global_worker
    if worker.legacy_local_mode:
        return function(*args, **kwargs)
    resolve = lambda v: _worker._local_value(v) if isinstance(v, _worker.ObjectID) else v  # noqa: E731
    ids = [_worker.ObjectID.from_random() for _ in range(num_returns)]
    try:
        result = function(*[resolve(a) for a in args], **{k: resolve(v) for k, v in kwargs.items()})
        results = [result] if num_returns == 1 else list(result) if num_returns else []
        if len(results) != num_returns:
            raise ValueError(f"{name} returned {len(results)} values, expected num_returns={num_returns}")
        for object_id, value in zip(ids, results):
            worker.local_objects[object_id] = ("value", value)
    except Exception as e:  # noqa: BLE001 - the task's exception becomes its result
        error = exceptions.RayTaskError.from_exception(name, e)
        for object_id in ids:
            worker.local_objects[object_id] = ("error", error)
    if num_returns == 1:
        return ids[0]
    return None if num_returns == 0 else ids
