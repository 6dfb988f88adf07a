"""Named actors, cluster-wide: a name in the GCS (`rayd:named_actor:<name>`) holds a
pickled handle, so any driver or worker of the cluster can get the actor by its name.
A registered name keeps its actor alive until the actor is killed or its job ends."""

import pickle

from ray._private import gcs
from ray._private import worker as _worker


def _key(name):
    return f"rayd:named_actor:{name}".encode()


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise TypeError(f"an actor's name must be a non-empty str, got {name!r}")


def check_free(name):
    """Raises ValueError when `name` is taken."""
    _check_name(name)
    if gcs.command("EXISTS", _key(name)):
        raise ValueError(f"the actor name {name!r} is already taken")


def register_actor(name, actor_handle):
    """Gives the actor `name` in the whole cluster (Ray 0.5: `ray.experimental.register_actor`)."""
    from ray.actor import ActorHandle
    _worker.global_worker.check_connected()
    _check_name(name)
    if not isinstance(actor_handle, ActorHandle):
        raise TypeError(f"register_actor takes an actor handle, got {type(actor_handle).__name__}")
    # A permanent hold: the name keeps the actor alive whoever gets it.
    function, args = actor_handle._serialize(permanent=True)
    if not gcs.command("SETNX", _key(name), pickle.dumps((function, args))):
        raise ValueError(f"the actor name {name!r} is already taken")


def get_actor(name):
    """The handle of the actor registered as `name` (`ray.get_actor` today)."""
    _worker.global_worker.check_connected()
    _check_name(name)
    raw = gcs.command("GET", _key(name))
    if raw is None:
        raise ValueError(f"no actor is named {name!r}")
    function, args = pickle.loads(raw)
    return function(*args)
