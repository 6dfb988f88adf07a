"""Seed: ten one-second tasks run in parallel (one second with ten CPUs)."""
import time
from time import sleep

import ray

ray.init(num_cpus=10)


def f1():
    sleep(1)


@ray.remote
def f2():
    sleep(1)


start = time.time()
# The following takes ten seconds.
[f1() for _ in range(10)]
print(f"serial: {time.time() - start:.1f} s")

start = time.time()
# The following takes one second (assuming the system has at least ten CPUs).
ray.get([f2.remote() for _ in range(10)])
print(f"remote: {time.time() - start:.1f} s")
