"""Actors: state, isolation, ordering, handles in tasks and actors, errors, kill, restarts."""

import os
import signal

import pytest

import ray
from ray import exceptions

from conftest import wait_for


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()

    @ray.method(num_return_vals=2)
    def pair(self):
        return self.value, -self.value

    @ray.method(num_returns=3)
    def triple(self):
        return 1, 2, 3


def test_state_is_kept_and_private_to_each_actor(shared_cluster):
    a, b = Counter.remote(), Counter.remote(100)
    assert ray.get([a.increment.remote() for _ in range(3)]) == [1, 2, 3]
    assert ray.get(b.increment.remote(5)) == 105
    assert ray.get(a.get.remote()) == 3
    assert ray.get(a.pid.remote()) != ray.get(b.pid.remote())
    assert ray.get(a.pid.remote()) != os.getpid()


def test_a_thousand_calls_from_one_handle_run_in_order(shared_cluster):
    counter = Counter.remote()
    ids = [counter.increment.remote() for _ in range(1000)]
    assert ray.get(ids, timeout=120) == list(range(1, 1001))


def test_multiple_returns(shared_cluster):
    counter = Counter.remote(7)
    value, negative = counter.pair.remote()
    assert ray.get([value, negative]) == [7, -7]
    assert ray.get(counter.triple.remote()) == [1, 2, 3]
    assert ray.get(counter.get.options(num_returns=1).remote()) == 7


def test_handles_work_in_tasks_and_other_actors(shared_cluster):
    counter = Counter.remote()

    @ray.remote
    def bump(handle, times):
        return ray.get([handle.increment.remote() for _ in range(times)])[-1]

    @ray.remote
    class Caller:
        def __init__(self, handle):
            self.handle = handle

        def call(self):
            return ray.get(self.handle.increment.remote(10))

    assert ray.get(bump.remote(counter, 3)) == 3
    caller = Caller.remote(counter)
    assert ray.get(caller.call.remote()) == 13
    assert ray.get(counter.get.remote()) == 13


def test_a_method_error_surfaces_and_the_actor_lives_on(shared_cluster):
    @ray.remote
    class Fragile:
        def fail(self):
            raise ValueError("method failed")

        def ok(self):
            return "ok"

    actor = Fragile.remote()
    with pytest.raises(ValueError, match="method failed"):
        ray.get(actor.fail.remote())
    assert ray.get(actor.ok.remote()) == "ok"


def test_a_constructor_error_surfaces_on_every_call(shared_cluster):
    @ray.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("constructor failed")

        def method(self):
            return 1

    actor = Broken.remote()
    for _ in range(2):
        with pytest.raises(exceptions.RayTaskError, match="constructor failed"):
            ray.get(actor.method.remote())


def test_kill_fails_pending_and_later_calls(shared_cluster):
    counter = Counter.remote()
    assert ray.get(counter.increment.remote()) == 1
    ray.kill(counter)
    with pytest.raises(exceptions.RayActorError, match="ray.kill"):
        ray.get(counter.increment.remote(), timeout=30)
    with pytest.raises(TypeError):
        ray.kill("not a handle")


def test_a_killed_actor_process_gives_an_actor_error(shared_cluster):
    counter = Counter.remote()
    pid = ray.get(counter.pid.remote())
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(exceptions.RayActorError):
        ray.get(counter.increment.remote(), timeout=30)


def test_max_restarts_restarts_the_actor(shared_cluster):
    restartable = Counter.options(max_restarts=1).remote(5)
    first = ray.get(restartable.pid.remote())
    os.kill(first, signal.SIGKILL)

    def restarted():
        try:
            return ray.get(restartable.pid.remote(), timeout=30)
        except exceptions.RayActorError:
            return None  # a call that raced with the death

    second = wait_for(restarted, 30, "the restarted actor to answer")
    assert second != first
    # The constructor ran again.
    assert ray.get(restartable.get.remote()) == 5


@ray.remote
class Fragile:
    def __init__(self):
        self.calls = 0

    def call(self, die=False):
        if die:
            os._exit(1)
        self.calls += 1
        return self.calls


def test_calls_queued_behind_a_dying_call_run_on_the_restarted_actor(shared_cluster):
    """Calls are sent to the actor's worker ahead of time; those that had not started when
    its process died run, in order, on the restarted actor."""
    fragile = Fragile.options(max_restarts=1).remote()
    assert ray.get(fragile.call.remote()) == 1
    dying = fragile.call.remote(die=True)
    after = [fragile.call.remote() for _ in range(30)]
    with pytest.raises(exceptions.RayActorError):
        ray.get(dying, timeout=60)
    assert ray.get(after, timeout=60) == list(range(1, 31))


def test_calls_queued_behind_a_dying_call_fail_without_restarts(shared_cluster):
    fragile = Fragile.remote()
    dying = fragile.call.remote(die=True)
    after = [fragile.call.remote() for _ in range(10)]
    for ref in [dying] + after:
        with pytest.raises(exceptions.RayActorError):
            ray.get(ref, timeout=60)


def test_an_actor_cannot_be_instantiated_directly(shared_cluster):
    with pytest.raises(TypeError, match="Counter.remote"):
        Counter()


def test_local_mode_actors(cleanup):
    ray.init(local_mode=True)
    counter = Counter.remote(1)
    assert ray.get(counter.increment.remote()) == 2
    assert ray.get(counter.pid.remote()) == os.getpid()
