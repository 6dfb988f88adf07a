"""Seed: arguments by value or by object ID behave the same."""
import ray

ray.init()


@ray.remote
def add2(a, b):
    return a + b


print(ray.get([
    add2.remote(1, 2),
    add2.remote(1, ray.put(2)),
    add2.remote(ray.put(1), ray.put(2)),
]))  # [3, 3, 3]
