"""Seed: each task depends on the previous one's result."""
import ray

ray.init()


@ray.remote
def f(x):
    return x + 1


x = f.remote(0)
y = f.remote(x)
z = f.remote(y)
print(ray.get(z))  # 3
