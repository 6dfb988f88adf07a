"""Seed: a remote function returns an object ID; ray.get fetches the value."""
import ray

ray.init()


@ray.remote
def add2(a, b):
    return a + b


x_id = add2.remote(1, 2)
print(ray.get(x_id))  # 3
