"""Seed: remote functions that call remote functions."""
import ray

ray.init()


@ray.remote
def sub_experiment(i, j):
    # Run the jth sub-experiment for the ith experiment.
    return i + j


@ray.remote
def run_experiment(i):
    sub_results = []
    # Launch tasks to perform 10 sub-experiments in parallel.
    for j in range(10):
        sub_results.append(sub_experiment.remote(i, j))
    # Return the sum of the results of the sub-experiments.
    return sum(ray.get(sub_results))


results = [run_experiment.remote(i) for i in range(5)]
print(ray.get(results))  # [45, 55, 65, 75, 85]
