"""`ray.internal.free` (today: `ray._private.internal_api.free`)."""

from ray._private import worker as _worker


def free(object_ids, local_only=False, delete_creating_tasks=False):
    """Drops objects from the object stores now, instead of waiting for eviction: from
    every node's (the copies the object table lists), or with `local_only` from this node's
    only. An object that a reader still maps goes when the reader releases it. Getting a
    freed object afterwards raises `ray.exceptions.ObjectFreedError` when no copy is left
    (it is not rebuilt); a get of it by another process while a reader still holds it
    waits for that reader. Returns nothing."""
    worker = _worker.global_worker
    worker.check_connected()
    if isinstance(object_ids, _worker.ObjectID):
        object_ids = [object_ids]
    ids = list(object_ids)
    for object_id in ids:
        if not isinstance(object_id, _worker.ObjectID):
            raise TypeError(f"free takes ObjectIDs, got {type(object_id).__name__}")
    if worker.mode == _worker.LOCAL_MODE:
        for object_id in ids:
            worker.local_objects.pop(object_id, None)
        return
    worker.core.free(ids, local_only=bool(local_only))
