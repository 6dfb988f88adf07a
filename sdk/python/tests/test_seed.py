"""Every code sample of the seed document (kept as the scripts of examples/, which
`make run` runs), each run as a program with its exact output checked."""

import os
import subprocess
import sys
import time

import pytest

import ray

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples")

EXPECTED = {
    "01_add2.py": "3",
    "03_arguments.py": "[3, 3, 3]",
    "04_multiple_returns.py": "[1, 2, 3]",
    "05_dependencies.py": "3",
    "06_tree_reduce.py": "1 (1000,)",
    "07_nested.py": "[45, 55, 65, 75, 85]",
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_seed_program(cleanup, script):
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == EXPECTED[script]


def test_parallel_tasks_overlap(ray_start):
    """02_parallel_sleep.py's point, on four CPUs: remote sleeps overlap."""
    ray_start(num_cpus=4)

    @ray.remote
    def f2():
        time.sleep(1)
        return 1

    ray.get([f2.remote() for _ in range(4)])  # the workers are warm
    start = time.time()
    assert ray.get([f2.remote() for _ in range(4)]) == [1] * 4
    assert time.time() - start < 3
