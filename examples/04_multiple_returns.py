"""Seed: num_return_vals gives several object IDs."""
import ray

ray.init()


@ray.remote(num_return_vals=3)
def return_multiple():
    return 1, 2, 3


a_id, b_id, c_id = return_multiple.remote()
print(ray.get([a_id, b_id, c_id]))  # [1, 2, 3]
