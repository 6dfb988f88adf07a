"""The SDK's own GCS tables, and reading the daemons' tables.

The daemons' keys are documented in `common/src/gcs/keys.rs`. The SDK adds these (no
daemon reads them):

| key | type | where | holds |
|---|---|---|---|
| `rayd:errors:<job>` | list | primary | JSON errors pushed to a driver (the daemons' schema) |
| `rayd:profile:<job>` | list | primary | a job's timeline events (task spans, `ray.profile`), JSON rows, the last 100,000 |
| `rayd:workers` | hash | primary | worker/driver hex ID -> JSON (pid, node, kind) |
| `rayd:named_actor:<name>` | string | primary | a pickled handle of a named actor |
| `rayd:actor_holds:<actor>` | string | actor's shard | processes and in-flight copies holding the actor |
| `rayd:actor_in_flight:<actor>` | set | actor's shard | tokens of pickled handles not yet unpickled |
| `rayd:actor_checkpoint:<actor>` | string | actor's shard | the pickled `__ray_save__` of the actor |
| `rayd:serializers:<job>` | hash | primary | class name -> pickled custom serializer |
"""

import json
import sys
import time

from ray._private import worker as _worker

WORKERS = b"rayd:workers"


def _arg(value):
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def command(name, *args, shard=None, core=None):
    """One Redis command on the GCS (the primary, or `shard`: an ID or a shard number)."""
    core = core or _worker.global_worker.core
    if core is None:
        _worker.global_worker.check_connected()
        raise _worker.exceptions.RaySystemError("this process has no GCS connection (LOCAL_MODE)")
    return core.gcs_command(name, [_arg(a) for a in args], shard)


# Appends ARGV[1] to the list KEYS[1] and announces it on the channel ARGV[2]: one round trip.
_PUSH_ERROR = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('PUBLISH', ARGV[2], ARGV[1])"


def errors_key(job_id):
    return f"rayd:errors:{job_id.hex()}".encode()


def push_error(job_id, kind, message, core=None):
    """Pushes an error to the driver of `job_id` (read by `ray.error_info()`)."""
    record = json.dumps({"kind": kind, "message": message, "time_ms": int(time.time() * 1000)})
    command("EVAL", _PUSH_ERROR, 1, errors_key(job_id), record, f"rayd:error_events:{job_id.hex()}",
            core=core)


def push_error_quietly(job_id, kind, message, core=None):
    """`push_error` for callers with an error of their own to report: a failure to push is
    printed to stderr, never raised in its place."""
    try:
        push_error(job_id, kind, message, core=core)
    except Exception as e:  # noqa: BLE001 - the caller's error matters more than this one
        print(f"cannot push an error to the driver: {type(e).__name__}: {e}", file=sys.stderr)


def hash_to_dict(reply):
    """An HGETALL reply as a dict of str -> bytes."""
    reply = reply or []
    return {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2)}


def scan_keys(pattern, shard):
    """Every key matching `pattern` on one server (SCAN, so a large table does not block it)."""
    keys, cursor = [], b"0"
    while True:
        cursor, batch = command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000, shard=shard)
        keys.extend(batch)
        if cursor == b"0":
            return keys


def shards():
    """The shard numbers of the GCS."""
    return range(_worker.global_worker.core.num_gcs_shards)
