"""The errors a rayd user can catch. Every class says what happened and where."""

import pickle as _pickle
from typing import Any
import traceback as _traceback


class RayError(Exception):
    """Base of every rayd error."""


class RaySystemError(RayError):
    """rayd itself failed (a daemon is unreachable, a protocol error, ...)."""


class RayletConnectionError(RaySystemError):
    """The connection to this node's raylet or object store failed: the node stopped or crashed."""


class ObjectStoreFullError(RayError):
    """The node's object store is full and nothing in it can be evicted."""


class ObjectLostError(RayError):
    """An object is gone from every node and cannot be rebuilt."""


class ObjectFreedError(ObjectLostError):
    """An object was freed by the program (`ray.internal.free`) and no copy is left."""


class GetTimeoutError(RayError, TimeoutError):
    """`ray.get` did not get every object within its timeout."""


class RayWorkerError(RayError):
    """The worker process running a task died (after any retries)."""


class RayActorError(RayError):
    """The actor's process died, or the actor was killed."""


class RayTaskError(RayError):
    """A task raised an exception; `ray.get` re-raises it in the driver.

    The instance raised by `ray.get` is also an instance of the original exception's
    class, so `except ZeroDivisionError:` catches a remote division by zero.
    """

    def __init__(self, function_name, traceback_str, cause=None, pid=None, ip=None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.ip = ip
        super().__init__(function_name, traceback_str, cause, pid, ip)

    @classmethod
    def from_exception(cls, function_name, exception, pid=None, ip=None):
        """Wraps the exception a task raised, with its remote traceback."""
        if isinstance(exception, RayTaskError):
            return exception
        # The worker's own frames (rayd's task executor) are noise to the user.
        tb = exception.__traceback__
        while tb is not None and "/ray/_private/" in tb.tb_frame.f_code.co_filename:
            tb = tb.tb_next
        text = "".join(_traceback.format_exception(type(exception), exception, tb))
        return cls(function_name, text, exception, pid, ip)

    def __reduce__(self):
        # The cause travels pickled on its own: a class the driver cannot import then
        # costs the cause, not the whole error (see _rebuild_task_error).
        cause = self.cause
        if cause is not None:
            try:
                from ray._private import serialization
                cause = serialization.dumps(cause)
            except Exception:  # noqa: BLE001 - its text stays in the traceback
                cause = None
        return (_rebuild_task_error, (type(self).__mro__[0] is RayTaskError, self.function_name,
                                      self.traceback_str, cause, self.pid, self.ip))

    def __str__(self):
        where = f" (pid={self.pid}, ip={self.ip})" if self.pid is not None else ""
        return f"task {self.function_name}{where} raised:\n{self.traceback_str.rstrip()}"

    def as_instanceof_cause(self):
        """This error as an instance of both RayTaskError and the cause's class."""
        cause_class = type(self.cause) if self.cause is not None else None
        if cause_class is None or isinstance(self, cause_class) or not issubclass(cause_class, Exception):
            return self
        try:
            dual = _DUAL_CLASSES.get(cause_class)
            if dual is None:
                dual = type(f"RayTaskError({cause_class.__name__})", (RayTaskError, cause_class), {
                    "__init__": RayTaskError.__init__,
                    "__str__": RayTaskError.__str__,
                    "__reduce__": RayTaskError.__reduce__,
                    "__module__": __name__,
                })
                _DUAL_CLASSES[cause_class] = dual
            error: Any = dual.__new__(dual)  # type: ignore[call-overload]
            RayTaskError.__init__(error, self.function_name, self.traceback_str, self.cause, self.pid, self.ip)
            error.args = self.cause.args if isinstance(self.cause.args, tuple) else error.args
            return error
        except TypeError:
            # Some builtin exception classes cannot be combined (incompatible layouts).
            return self


_DUAL_CLASSES: "dict[type, type]" = {}


def _rebuild_task_error(_plain, function_name, traceback_str, cause, pid, ip):
    if isinstance(cause, bytes):
        try:
            cause = _pickle.loads(cause)
        except Exception as e:  # noqa: BLE001 - e.g. the exception's class is not importable here
            traceback_str = (f"{traceback_str.rstrip()}\n(the exception of task {function_name} cannot be "
                             f"rebuilt here, so it is raised as RayTaskError: {type(e).__name__}: {e})")
            cause = None
    return RayTaskError(function_name, traceback_str, cause, pid, ip)


__all__ = [
    "RayError",
    "RaySystemError",
    "RayletConnectionError",
    "ObjectStoreFullError",
    "ObjectLostError",
    "ObjectFreedError",
    "GetTimeoutError",
    "RayWorkerError",
    "RayActorError",
    "RayTaskError",
]
