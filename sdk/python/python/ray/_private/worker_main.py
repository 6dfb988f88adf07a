"""The Python side of a rayd-worker process: runs each task the Rust task loop hands it."""

import os
import pickle
import sys
import time
from typing import Any, Dict, Optional, Sequence

from ray import _raylet
from ray import exceptions
from ray._private import gcs
from ray._private import profiling
from ray._private import serialization
from ray._private import worker as _worker


def _visible_devices(value):
    """The GPUs the node was given by CUDA_VISIBLE_DEVICES (None: all of the machine's)."""
    if value is None:
        return None
    return [d.strip() for d in value.split(",") if d.strip()]


def _physical_gpus(assigned, visible):
    """The node's GPU instances (0, 1, ...) as the machine's devices: the node's instance i
    is the i-th of CUDA_VISIBLE_DEVICES when the node was started with it."""
    gpus = []
    for index, fraction in assigned:
        name = visible[index] if visible is not None and index < len(visible) else str(index)
        gpus.append((int(name) if name.isdigit() else name, fraction))
    return gpus


class Executor:
    """Loads functions (cached), resolves arguments, runs tasks, stores their results."""

    def __init__(self, core):
        self.core = core
        self.functions = {}
        self.jobs_seen = set()
        # The version of each job's custom serializers loaded here (see custom_serializers).
        self.serializer_versions: Dict[Any, Optional[int]] = {}
        self.ip = core.node_ip_address
        self.pid = os.getpid()
        self.node_gpus = _visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
        # What CUDA_VISIBLE_DEVICES is set to for the running task (set only on changes).
        self.cuda_visible = None
        # The actor this worker is dedicated to, once its creation task ran here.
        self.actor: Any = None
        # The actor's methods by name, found on its class (descriptors, bound per call).
        self.methods: Dict[str, Any] = {}
        self.actor_error: Optional[exceptions.RayTaskError] = None
        # The error of the task running now, for its span on the timeline.
        self.task_error: Optional[str] = None
        # Checkpointing actors: every how many calls, and how many since the last one.
        self.checkpoint_interval: Optional[int] = None
        self.calls_since_checkpoint = 0

    def _enter_job(self, task):
        job = task["job_id"]
        if job in self.jobs_seen or "python_path" not in task:
            return
        self.jobs_seen.add(job)
        for entry in reversed(task["python_path"]):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        if task.get("cwd"):
            try:
                os.chdir(task["cwd"])
            except OSError:
                pass
        from ray._private import custom_serializers
        self.serializer_versions[job] = custom_serializers.load_for_job(job, self.core)

    def _fresh_serializers(self, task, convert):
        """`convert()`, once more with the job's custom serializers reloaded when it fails
        and the driver registered serializers since this worker loaded them (asked only
        then: a Redis round trip per task would cost more than the task)."""
        try:
            return convert()
        except Exception:
            from ray._private import custom_serializers
            job = task["job_id"]
            if custom_serializers.version(job, self.core) == self.serializer_versions.get(job):
                raise
            self.serializer_versions[job] = custom_serializers.load_for_job(job, self.core)
            return convert()

    def _function(self, function_id, task):
        function = self.functions.get(function_id)
        if function is None:
            _name, pickled = self.core.get_function(function_id)
            try:
                function = serialization.cloudpickle.loads(pickled)
            except Exception as e:
                self._push_error(task, "import", f"cannot load {task['function_name']} in a worker "
                                 f"(pid {self.pid}): {type(e).__name__}: {e}")
                raise
            self.functions[function_id] = function
        return function

    def _push_error(self, task, kind, message):
        if kind == "task":
            self.task_error = message
        gcs.push_error_quietly(task["job_id"], kind, message, core=self.core)

    def _checkpoint_key(self, task):
        return f"rayd:actor_checkpoint:{task['actor_id'].hex()}".encode()

    def _create_actor(self, task, args, kwargs):
        """Runs the constructor; its exception is kept and raised by every later call. A
        checkpointing actor that restarts gets its last checkpoint (`__ray_restore__`)."""
        from ray.actor import CheckpointedClass
        cls = self._function(task["function_id"], task)
        if isinstance(cls, CheckpointedClass):
            cls, self.checkpoint_interval = cls.cls, cls.interval
        try:
            self.actor = cls(*args, **kwargs)
            if self.checkpoint_interval is not None:
                saved = gcs.command("GET", self._checkpoint_key(task), shard=task["actor_id"], core=self.core)
                if saved is not None:
                    self.actor.__ray_restore__(pickle.loads(saved))
        except Exception as e:  # noqa: BLE001 - the constructor's failure is the actor's
            self.actor_error = exceptions.RayTaskError.from_exception(
                f"{task['function_name']}.__init__", e, self.pid, self.ip)
            self._push_error(task, "task", str(self.actor_error))

    def _after_call(self, task):
        """Checkpointing actors: saves the state every `checkpoint_interval` calls."""
        assert self.checkpoint_interval is not None
        self.calls_since_checkpoint += 1
        if self.calls_since_checkpoint < self.checkpoint_interval:
            return
        self.calls_since_checkpoint = 0
        checkpoint = serialization.cloudpickle.dumps(self.actor.__ray_save__())
        gcs.command("SET", self._checkpoint_key(task), checkpoint, shard=task["actor_id"], core=self.core)

    def _argument(self, arg):
        if isinstance(arg, _raylet.ObjectID):
            return _worker.get(arg)
        return serialization.deserialize_inline(arg)

    def execute(self, task):
        """Runs one task (recording its span on the timeline)."""
        start = time.time()
        self.task_error = None
        try:
            self._execute(task)
        finally:
            # A task that raised carries its error on the timeline (the dashboard shows it).
            extra = {"error": self.task_error} if self.task_error else None
            profiling.record_span("task", task["function_name"], task["task_id"].hex(), start, time.time(),
                                  extra)

    def _execute(self, task):
        """Runs one task; every failure becomes the task's error results."""
        num_returns = task["num_returns"]
        name = task["function_name"]
        resource_ids = task["resource_ids"]
        visible = ""
        if resource_ids.get("GPU"):
            gpus = _physical_gpus(resource_ids["GPU"], self.node_gpus)
            resource_ids = dict(resource_ids, GPU=gpus)
            visible = ",".join(str(i) for i, _ in gpus)
        _worker.global_worker.resource_ids = resource_ids
        if visible != self.cuda_visible:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_visible = visible
        try:
            self._enter_job(task)
            args: Sequence[Any] = ()
            kwargs: Dict[str, Any] = {}
            if task["args"]:
                values = [self._fresh_serializers(task, lambda a=a: self._argument(a))
                          for a in task["args"]]
                kwarg_names = task["kwarg_names"]
                split = len(values) - len(kwarg_names)
                args, kwargs = values[:split], dict(zip(kwarg_names, values[split:]))
            if task["actor_creation"]:
                self._create_actor(task, args, kwargs)
                return
            if task["actor_id"] is not None:
                if self.actor_error is not None:
                    raise self.actor_error
                # On the class, as Ray does: an attribute of the instance may have the name.
                method = self.methods.get(name)
                if method is None:
                    from ray.actor import find_method
                    method = self.methods[name] = find_method(type(self.actor), name)
                function = method.__get__(self.actor, type(self.actor))
            else:
                function = self._function(task["function_id"], task)
            result = function(*args, **kwargs)
            if num_returns == 1:
                results = [result]
            elif num_returns == 0:
                results = []
            else:
                results = list(result)
                if len(results) != num_returns:
                    raise ValueError(f"{name} returned {len(results)} values, "
                                     f"but num_returns={num_returns}")
            for index, value in enumerate(results, start=1):
                data, buffers = self._fresh_serializers(
                    task, lambda value=value: serialization.serialize(value))
                self.core.store_return(index, serialization.META_PICKLE5, data, buffers)
        except Exception as e:  # noqa: BLE001 - the task's failure is its result
            error = exceptions.RayTaskError.from_exception(name, e, self.pid, self.ip)
            self._push_error(task, "task", str(error))
            data, buffers = serialization.task_error_value(error)
            for index in range(1, num_returns + 1):
                try:
                    self.core.store_return(index, serialization.META_ERROR_TASK, data, buffers)
                except exceptions.RayError as store_error:
                    print(f"cannot store the error of {name}: {store_error}", file=sys.stderr)
        else:
            # After the returns are stored: the call succeeded, whatever its checkpoint does.
            if self.checkpoint_interval is not None and task["actor_id"] is not None:
                try:
                    self._after_call(task)
                except Exception as e:  # noqa: BLE001 - reported to the driver, not the caller
                    self._push_error(task, "checkpoint", f"cannot checkpoint actor "
                                     f"{task['actor_id'].hex()} after {name} (pid {self.pid}): "
                                     f"{type(e).__name__}: {e}")


def _warm_imports():
    """Imports numpy now, while the worker waits for its first task, rather than inside
    the first task that unpickles an array (~100 ms)."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        pass


def main():
    """Connects to the raylet named by RAYD_RAYLET_SOCKET and serves tasks until told to exit."""
    # As Ray does: a task's numeric libraries use one thread unless the user says
    # otherwise (a pool of spinning BLAS threads per worker competes with the tasks).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    core = _raylet.CoreWorker(os.environ["RAYD_RAYLET_SOCKET"], is_worker=True)
    _warm_imports()
    _worker.connect_worker(core)
    try:
        core.run_task_loop(Executor(core).execute)
    finally:
        profiling.stop()
