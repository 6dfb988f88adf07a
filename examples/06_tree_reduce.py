"""Seed: a tree reduce over 100 arrays of random normals."""
import numpy as np

import ray

ray.init()


@ray.remote
def generate_data():
    return np.random.normal(size=1000)


@ray.remote
def aggregate_data(x, y):
    return x + y


# Generate some random data. This launches 100 tasks that will be scheduled on
# various nodes. The resulting data will be distributed around the cluster.
data = [generate_data.remote() for _ in range(100)]

# Perform a tree reduce.
while len(data) > 1:
    data.append(aggregate_data.remote(data.pop(0), data.pop(0)))

# Fetch the result.
result = ray.get(data)
print(len(result), result[0].shape)  # 1 (1000,)
