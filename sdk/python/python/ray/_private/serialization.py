"""Values to bytes and back: pickle protocol 5 with out-of-band buffers.

Large binary payloads (numpy arrays) travel as out-of-band buffers that the Rust core lays
out, aligned, next to the pickle inside the object; reading the object back hands those
buffers out as read-only views of shared memory, so the arrays are neither copied nor
writable. Functions and values that plain pickle cannot handle (lambdas, classes defined
in `__main__`) go through cloudpickle.
"""

import collections
import io
import pickle
import types
from typing import Any

import cloudpickle

from ray import _raylet
from ray import exceptions

META_PICKLE5 = _raylet.META_PICKLE5
META_ERROR_PREFIX = _raylet.META_ERROR_PREFIX
META_ERROR_TASK = META_ERROR_PREFIX + b"TASK"
META_ERROR_WORKER_DIED = META_ERROR_PREFIX + b"WORKER_DIED"
META_ERROR_ACTOR_DIED = META_ERROR_PREFIX + b"ACTOR_DIED"
META_ERROR_OBJECT_LOST = META_ERROR_PREFIX + b"OBJECT_LOST"
META_ERROR_OBJECT_FREED = META_ERROR_PREFIX + b"OBJECT_FREED"

# Types that plain pickle serializes correctly and faster than cloudpickle.
_PLAIN_TYPES = (int, float, bool, str, bytes, type(None), complex)


# Classes with a serializer of their own (`ray.register_custom_serializer`):
# class -> (serializer, deserializer).
_custom: "dict[type, tuple[Any, Any]]" = {}


def register(cls, serializer, deserializer):
    """Serializes instances of `cls` (exactly that class) as `serializer(obj)`, rebuilt by
    `deserializer(data)`; with both None, back to plain pickling."""
    if serializer is None:
        _custom.pop(cls, None)
    else:
        _custom[cls] = (serializer, deserializer)


def _rebuild_custom(cls, serializer, deserializer, data):
    # The receiving process learns the serializer: it may send instances back.
    _custom.setdefault(cls, (serializer, deserializer))
    return deserializer(data)


def _code_reduce(code):
    """cloudpickle's reduction of a code object, keeping its file name: cloudpickle writes
    `<dynamic-code>` instead, and a remote traceback would name no file of the user's."""
    rebuild, args = cloudpickle.cloudpickle._code_reduce(code)
    if args[_CO_FILENAME] == "<dynamic-code>":
        args = args[:_CO_FILENAME] + (code.co_filename,) + args[_CO_FILENAME + 1:]
    return rebuild, args


# The position of the file name among `types.CodeType`'s arguments (Python 3.8 and later).
_CO_FILENAME = 10


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, keeping code's file names, with the registered serializers."""

    dispatch_table = collections.ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)

    def reducer_override(self, obj):
        if _custom:
            entry = _custom.get(type(obj))
            if entry is not None:
                serializer, deserializer = entry
                return _rebuild_custom, (type(obj), serializer, deserializer, serializer(obj))
        return super().reducer_override(obj)


def _dumps(value, buffer_callback=None):
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffer_callback).dump(value)
    return out.getvalue()


def serialize(value):
    """`(pickle bytes, [contiguous buffers])` for a value."""
    buffers: "list[pickle.PickleBuffer]" = []
    if type(value) in _PLAIN_TYPES:
        data = pickle.dumps(value, protocol=5)
    else:
        data = _dumps(value, buffers.append)
    return data, [buffer.raw() for buffer in buffers]


def deserialize_inline(blob):
    """The value of an inline task argument."""
    view = memoryview(blob)
    (start, end), ranges = _raylet.parse_inline(blob)
    return pickle.loads(view[start:end], buffers=[view[a:b] for a, b in ranges])


def dumps(value):
    """A value pickled whole (no out-of-band buffers), functions and classes by value."""
    return _dumps(value)


dumps_function = dumps


def deserialize_object(metadata, buffer, pickle_range, buffer_ranges):
    """The value of an object from the store, raising the error it holds if it is one."""
    view = memoryview(buffer)
    if metadata == META_PICKLE5:
        start, end = pickle_range
        return pickle.loads(view[start:end], buffers=[view[a:b] for a, b in buffer_ranges])
    if metadata == META_ERROR_TASK:
        start, end = pickle_range
        error = pickle.loads(view[start:end], buffers=[view[a:b] for a, b in buffer_ranges])
        raise error.as_instanceof_cause() if isinstance(error, exceptions.RayTaskError) else error
    if metadata == META_ERROR_WORKER_DIED:
        raise exceptions.RayWorkerError(bytes(view).decode("utf-8", "replace"))
    if metadata == META_ERROR_ACTOR_DIED:
        raise exceptions.RayActorError(bytes(view).decode("utf-8", "replace"))
    if metadata == META_ERROR_OBJECT_LOST:
        raise exceptions.ObjectLostError(bytes(view).decode("utf-8", "replace"))
    if metadata == META_ERROR_OBJECT_FREED:
        raise exceptions.ObjectFreedError(bytes(view).decode("utf-8", "replace"))
    if metadata.startswith(META_ERROR_PREFIX):
        raise exceptions.RaySystemError(
            f"{metadata[len(META_ERROR_PREFIX):].decode()}: {bytes(view).decode('utf-8', 'replace')}")
    raise exceptions.RaySystemError(f"object with unknown metadata {metadata!r}")


def task_error_value(error):
    """`(pickle, buffers)` of a RayTaskError; a cause that cannot be pickled is dropped
    (its text stays in the traceback)."""
    try:
        return serialize(error)
    except Exception:  # noqa: BLE001 - any pickling failure of a user exception
        plain = exceptions.RayTaskError(error.function_name, error.traceback_str, None, error.pid, error.ip)
        return serialize(plain)
