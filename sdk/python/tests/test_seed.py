"""Every code sample of the seed document, with its exact result."""

import time

import numpy as np

import ray


def test_add2(shared_cluster):
    @ray.remote
    def add2(a, b):
        return a + b

    x_id = add2.remote(1, 2)
    assert ray.get(x_id) == 3


def test_parallel_tasks_overlap(ray_start):
    ray_start(num_cpus=4)

    @ray.remote
    def f2():
        time.sleep(1)
        return 1

    ray.get([f2.remote() for _ in range(4)])  # warm the workers
    start = time.time()
    assert ray.get([f2.remote() for _ in range(4)]) == [1] * 4
    # Four one-second tasks on four CPUs: one second, not four.
    assert time.time() - start < 3


def test_arguments_by_value_or_id_behave_the_same(shared_cluster):
    @ray.remote
    def add2(a, b):
        return a + b

    results = ray.get([add2.remote(1, 2), add2.remote(1, ray.put(2)), add2.remote(ray.put(1), ray.put(2))])
    assert results == [3, 3, 3]


def test_return_multiple(shared_cluster):
    @ray.remote(num_return_vals=3)
    def return_multiple():
        return 1, 2, 3

    a_id, b_id, c_id = return_multiple.remote()
    assert ray.get([a_id, b_id, c_id]) == [1, 2, 3]


def test_dependencies(shared_cluster):
    @ray.remote
    def f(x):
        return x + 1

    x = f.remote(0)
    y = f.remote(x)
    z = f.remote(y)
    assert ray.get(z) == 3


def test_tree_reduce(shared_cluster):
    @ray.remote
    def generate_data():
        return np.random.normal(size=1000)

    @ray.remote
    def aggregate_data(x, y):
        return x + y

    data = [generate_data.remote() for _ in range(100)]
    leaves = ray.get(data)
    while len(data) > 1:
        data.append(aggregate_data.remote(data.pop(0), data.pop(0)))
    result = ray.get(data)
    assert len(result) == 1
    np.testing.assert_allclose(result[0], np.sum(leaves, axis=0))


def test_nested_experiments(shared_cluster):
    @ray.remote
    def sub_experiment(i, j):
        return i + j

    @ray.remote
    def run_experiment(i):
        sub_results = []
        for j in range(10):
            sub_results.append(sub_experiment.remote(i, j))
        return sum(ray.get(sub_results))

    results = [run_experiment.remote(i) for i in range(5)]
    assert ray.get(results) == [45, 55, 65, 75, 85]
