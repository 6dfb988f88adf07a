"""Ray 0.5's `ray.internal`: `free`."""

from ray._private.internal_api import free

__all__ = ["free"]
