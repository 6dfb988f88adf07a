"""`ray.register_custom_serializer`: how instances of a class travel between processes.

The serializer and deserializer travel inside every serialized instance (pickled by value
when they are defined in `__main__`), so the process that receives one can rebuild it, and
learns the serializer to send instances back. A driver's registrations are also stored in
the GCS (`rayd:serializers:<job>`), and a worker loads them when it starts serving the job,
for classes it makes instances of without having received one; the hash's version field
(counted up by each registration) tells a worker to load them again.
"""

import pickle

import cloudpickle

from ray._private import gcs
from ray._private import serialization
from ray._private import worker as _worker


def _key(job_id):
    return f"rayd:serializers:{job_id.hex()}".encode()


# The field of the hash that counts registrations (no class is named so).
VERSION = b"\x00version"

# Stores a serializer (KEYS[1], field ARGV[1] = ARGV[2]) and counts the version up: one step.
_REGISTER = ("redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) "
             "return redis.call('HINCRBY', KEYS[1], ARGV[3], 1)")


def _dict_serializer(obj):
    return obj.__dict__


class _DictDeserializer:
    """Rebuilds an instance of `cls` from its `__dict__` (without calling `__init__`)."""

    def __init__(self, cls):
        self.cls = cls

    def __call__(self, state):
        obj = self.cls.__new__(self.cls)
        obj.__dict__.update(state)
        return obj


def register_custom_serializer(cls, use_pickle=False, use_dict=False, serializer=None,
                               deserializer=None, local=False, job_id=None, class_id=None):
    """Says how instances of `cls` are serialized (Ray 0.5): with `serializer(obj)` and
    `deserializer(data)`, by their `__dict__` (`use_dict=True`), or with pickle
    (`use_pickle=True`, the default for every class). `local=True`: this process only."""
    if not isinstance(cls, type):
        raise TypeError(f"register_custom_serializer takes a class, got {type(cls).__name__}")
    given = sum([bool(use_pickle), bool(use_dict), serializer is not None or deserializer is not None])
    if given != 1:
        raise ValueError("give exactly one of use_pickle=True, use_dict=True, or serializer and deserializer")
    if (serializer is None) != (deserializer is None):
        raise ValueError("give both serializer and deserializer")
    if use_dict:
        serializer, deserializer = _dict_serializer, _DictDeserializer(cls)
    serialization.register(cls, serializer, deserializer)
    worker = _worker.global_worker
    if local or worker.core is None:
        return
    job = worker.core.job_id
    name = f"{cls.__module__}.{cls.__qualname__}"
    gcs.command("EVAL", _REGISTER, 1, _key(job), name, cloudpickle.dumps((cls, serializer, deserializer)),
                VERSION)


def version(job_id, core):
    """How many registrations the driver of `job_id` made (None: no GCS to ask)."""
    try:
        raw = gcs.command("HGET", _key(job_id), VERSION, core=core)
    except Exception:  # noqa: BLE001 - no GCS: nothing registered
        return None
    return int(raw or 0)


def load_for_job(job_id, core):
    """Workers: the serializers the driver of `job_id` registered so far; returns the
    version loaded (None: no GCS to ask)."""
    try:
        reply = gcs.command("HGETALL", _key(job_id), core=core)
    except Exception:  # noqa: BLE001 - no GCS: nothing registered
        return None
    fields = gcs.hash_to_dict(reply)
    loaded = int(fields.pop(VERSION.decode(), 0))
    for raw in fields.values():
        try:
            cls, serializer, deserializer = pickle.loads(raw)
        except Exception:  # noqa: BLE001 - a class this worker cannot import: it is skipped
            continue
        serialization.register(cls, serializer, deserializer)
    return loaded
