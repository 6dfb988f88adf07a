"""Named actors, cluster-wide: a name in the GCS (`rayd:named_actor:<name>`) holds the actor's
ID and a pickled handle, so any driver or worker of the cluster can get the actor by its name.
A registered name keeps its actor alive until the actor is killed or its job ends; a name whose
actor is dead (in the GCS actor table) is free again."""

import pickle

from ray._private import gcs
from ray._private import worker as _worker

# Sets KEYS[1] to ARGV[2] if it still holds ARGV[1] (compare and set): frees a dead actor's name
# without overwriting a name another driver claimed meanwhile.
_REPLACE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0")


def _key(name):
    return f"rayd:named_actor:{name}".encode()


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise TypeError(f"an actor's name must be a non-empty str, got {name!r}")


def _load(raw):
    """(actor ID, handle rebuilder, its args) of a stored name."""
    entry = pickle.loads(raw)
    if len(entry) == 2:  # written before the ID was stored with the handle
        function, args = entry
        return args[0], function, args
    return entry


def _is_dead(actor_id):
    state = gcs.command("HGET", f"rayd:actor:{actor_id.hex()}".encode(), b"state", shard=actor_id)
    return state == b"dead"


def _live_entry(name):
    """The stored bytes and entry of `name`, (raw, None) when its actor is dead, or None."""
    raw = gcs.command("GET", _key(name))
    if raw is None:
        return None
    entry = _load(raw)
    return (raw, None) if _is_dead(entry[0]) else (raw, entry)


def check_free(name):
    """Raises ValueError when `name` is taken by an actor that is not dead."""
    _check_name(name)
    found = _live_entry(name)
    if found is not None and found[1] is not None:
        raise ValueError(f"the actor name {name!r} is already taken")


def _claim(name, value):
    """Stores `value` under `name` if the name is free or its actor dead; False if taken."""
    while True:
        if gcs.command("SETNX", _key(name), value):
            return True
        found = _live_entry(name)
        if found is None:
            continue  # deleted meanwhile: try again
        raw, entry = found
        if entry is not None:
            return False
        if gcs.command("EVAL", _REPLACE, 1, _key(name), raw, value):
            return True


def register_actor(name, actor_handle):
    """Gives the actor `name` in the whole cluster (Ray 0.5: `ray.experimental.register_actor`)."""
    from ray.actor import ActorHandle, _holds
    _worker.global_worker.check_connected()
    _check_name(name)
    if not isinstance(actor_handle, ActorHandle):
        raise TypeError(f"register_actor takes an actor handle, got {type(actor_handle).__name__}")
    # The handle as a permanent copy (no token): claim the name first, and take the hold the
    # name keeps only once it is ours, so a name already taken leaks no hold.
    actor_id = actor_handle._actor_id
    function, args = actor_handle._serialize_without_hold()
    if not _claim(name, pickle.dumps((actor_id, function, args))):
        raise ValueError(f"the actor name {name!r} is already taken")
    if actor_handle._core is not None:
        _holds.pickled(actor_id, permanent=True)


def get_actor(name):
    """The handle of the actor registered as `name` (`ray.get_actor` today)."""
    _worker.global_worker.check_connected()
    _check_name(name)
    found = _live_entry(name)
    if found is None or found[1] is None:
        raise ValueError(f"no actor is named {name!r}")
    _, function, args = found[1]
    return function(*args)
