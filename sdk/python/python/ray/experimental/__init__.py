"""Ray 0.5's `ray.experimental`: `get`/`wait` on any container of object IDs, and named
actors (`register_actor` / `get_actor`)."""

from ray._private import worker as _worker
from ray.experimental.named_actors import get_actor, register_actor


def _flatten(object_ids):
    """The object IDs of a dict's values, or of any other iterable, in order."""
    if isinstance(object_ids, _worker.ObjectID):
        return None
    if isinstance(object_ids, dict):
        return list(object_ids.values())
    return list(object_ids)


def get(object_ids, timeout=None):
    """`ray.get` on a dict (returns a dict with the same keys), a tuple (returns a tuple),
    or any other iterable of object IDs (returns a list); values that are not object IDs
    are returned as they are."""
    import ray
    if isinstance(object_ids, _worker.ObjectID):
        return ray.get(object_ids, timeout=timeout)
    items = _flatten(object_ids)
    positions = [i for i, v in enumerate(items) if isinstance(v, _worker.ObjectID)]
    values = ray.get([items[i] for i in positions], timeout=timeout) if positions else []
    for i, value in zip(positions, values):
        items[i] = value
    if isinstance(object_ids, dict):
        return dict(zip(object_ids.keys(), items))
    if isinstance(object_ids, tuple):
        return tuple(items)
    return items


def wait(object_ids, num_returns=1, timeout=None):
    """`ray.wait` on any iterable of object IDs (a dict: its values)."""
    import ray
    if isinstance(object_ids, _worker.ObjectID):
        # ray.wait's own error for a single ID.
        return ray.wait(object_ids, num_returns=num_returns, timeout=timeout)  # type: ignore[arg-type]
    return ray.wait(_flatten(object_ids), num_returns=num_returns, timeout=timeout)


__all__ = ["get", "get_actor", "register_actor", "wait"]
