"""The object store seen from a driver: one memory budget, spilling to disk when it is full
(restored on get, shown by `rayd status`), and a clear error when the disk is full too."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import ray
from conftest import wait_for

RAYD = os.path.join(os.path.dirname(sys.executable), "rayd")
MB = 1_000_000


def _status(address):
    return subprocess.run([RAYD, "status", "--redis-address", address], capture_output=True,
                          text=True, timeout=30).stdout


def test_a_gigabyte_of_puts_spills_through_a_small_store_and_reads_back(ray_start, tmp_path):
    spill = tmp_path / "spill"
    worker = ray_start(object_store_memory=200 * MB, object_spilling_directory=str(spill))
    # 50 arrays of 20 MB: five times the store.
    refs = [ray.put(np.full(20 * MB // 8, i, dtype=np.int64)) for i in range(50)]
    for i, ref in enumerate(refs):
        value = ray.get(ref)
        assert value.shape == (20 * MB // 8,) and value[0] == i and value[-1] == i
        assert int(value.sum()) == i * (20 * MB // 8), f"array {i} changed"
        del value
    # And as a task's argument.
    @ray.remote
    def total(a):
        return int(a.sum())

    assert ray.get(total.remote(refs[0])) == 0
    assert ray.get(total.remote(refs[1])) == 20 * MB // 8
    assert os.listdir(spill) == [], "the spill file is unlinked"

    address = worker.info["redis_address"]

    def spilled():
        match = re.search(r"spilled: (\d+) objects, ([\d.]+) MiB on disk \(([\d.]+) MiB written",
                          _status(address))
        return match if match and float(match.group(3)) >= 800 else None

    match = wait_for(spilled, 20, "rayd status to show the spilled bytes")
    assert int(match.group(1)) > 0


def test_small_and_large_objects_share_one_budget(ray_start):
    worker = ray_start(object_store_memory=200 * MB)
    # 160 MiB: most of an empty 200 MB store.
    big = ray.get(ray.put(np.ones(160 * 2**20 // 8)))
    assert big.shape == (160 * 2**20 // 8,) and big[-1] == 1.0
    del big
    address = worker.info["redis_address"]
    match = wait_for(lambda: re.search(r"(\d+) objects, (\d+) evictions; spilled: (\d+) objects",
                                       _status(address)), 20, "the store's figures")
    assert (match.group(2), match.group(3)) == ("0", "0"), match.group(0)


def test_a_gigabyte_of_small_puts_stays_in_the_default_store(ray_start):
    worker = ray_start()
    refs = [ray.put(np.full(2**20 // 8, i, dtype=np.int64)) for i in range(1200)]
    address = worker.info["redis_address"]

    def figures():
        match = re.search(r"(\d+) objects, (\d+) evictions; spilled: (\d+) objects",
                          _status(address))
        return match if match and int(match.group(1)) >= 1200 else None

    match = wait_for(figures, 20, "the store's figures to count 1,200 objects")
    assert (match.group(2), match.group(3)) == ("0", "0"), "1.2 GB of 1 MiB puts left memory"
    for i in range(0, 1200, 97):
        assert ray.get(refs[i])[-1] == i


def _mount_tmpfs(path, size):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_full_disk_fails_the_put_naming_both_limits(ray_start, tmp_path):
    spill = tmp_path / "spill"
    if not _mount_tmpfs(spill, "50m"):
        pytest.skip("cannot mount a tmpfs (not root?)")
    try:
        ray_start(object_store_memory=100 * MB, object_spilling_directory=str(spill))
        refs = []
        with pytest.raises(ray.exceptions.ObjectStoreFullError) as raised:
            for i in range(20):
                refs.append(ray.put(np.full(10 * MB // 8, i, dtype=np.int64)))
        message = str(raised.value)
        assert "object_store_memory (100000000 bytes)" in message, message
        assert f"the spill directory {spill} is full" in message, message
        # Every put that succeeded is still there.
        assert 10 <= len(refs) < 20
        for i, ref in enumerate(refs):
            assert ray.get(ref)[-1] == i
        ray.shutdown()
    finally:
        subprocess.run(["umount", str(spill)])


def test_an_object_larger_than_the_store_raises_object_store_full(ray_start):
    ray_start(object_store_memory=100 * MB)
    with pytest.raises(ray.exceptions.ObjectStoreFullError):
        ray.put(np.zeros(150 * MB, dtype=np.uint8))
    assert ray.get(ray.put("still fine")) == "still fine"


def test_each_init_removes_its_driver_dir_at_shutdown(cleanup, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYD_TEMP_DIR", str(tmp_path))
    for _ in range(2):
        ray.init(num_cpus=1)
        assert len(list(tmp_path.glob("driver_*"))) == 1
        ray.shutdown()
        assert list(tmp_path.glob("driver_*")) == []


_ATTACK = r"""
import ctypes, errno, mmap
values = [ray.get(ray.ObjectID(bytes.fromhex(h))) for h in sys.argv[1:]]
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

def refused(what, call, allowed):
    try:
        call()
    except OSError as e:
        assert e.errno in allowed, f"{what}: {e}"
        return
    raise AssertionError(f"{what} was not refused")

def write_map(fd):
    return mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

fds = maps = 0
for name in os.listdir("/proc/self/fd"):
    path = f"/proc/self/fd/{name}"
    try:
        target = os.readlink(path)
    except OSError:
        continue
    if "memfd:rayd-plasma" not in target:
        continue
    fds += 1
    fd = int(name)
    # The descriptor given is read-only; reopened read-write, the seals refuse writes.
    refused(f"mmap(PROT_WRITE) of {target}", lambda: write_map(fd), (errno.EACCES, errno.EPERM))
    refused(f"pwrite of {target}", lambda: os.pwrite(fd, b"x", 0),
            (errno.EBADF, errno.EPERM))
    rw = os.open(path, os.O_RDWR)
    refused(f"mmap(PROT_WRITE) of {target} reopened", lambda: write_map(rw), (errno.EPERM,))
    refused(f"pwrite of {target} reopened", lambda: os.pwrite(rw, b"x", 0), (errno.EPERM,))
    os.close(rw)
for line in open("/proc/self/maps"):
    if "memfd:rayd-plasma" not in line:
        continue
    maps += 1
    start, end = (int(x, 16) for x in line.split()[0].split("-"))
    if libc.mprotect(start, end - start, mmap.PROT_READ | mmap.PROT_WRITE) == 0:
        raise AssertionError(f"mprotect made {line.strip()} writable")
print("REFUSED", fds, maps, sum(int(v.sum()) for v in values))
"""


def test_no_driver_can_write_another_drivers_sealed_objects(shared_cluster):
    small = np.arange(100, dtype=np.uint8)
    large = np.arange(10 * MB // 8, dtype=np.int64)
    refs = [ray.put(small), ray.put(large)]
    address = ray._private.worker.global_worker.info["redis_address"]
    program = f"import os, ray, sys, time\nray.init(redis_address={address!r})\n" + _ATTACK
    out = subprocess.run([sys.executable, "-c", program] + [r.hex() for r in refs],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert words[0] == "REFUSED", out.stdout
    fds, maps, total = (int(w) for w in words[1:4])
    assert fds >= 2 and maps >= 2, f"nothing attacked: {out.stdout}"
    assert total == int(small.sum()) + int(large.sum())
    assert np.array_equal(ray.get(refs[0]), small)
    assert np.array_equal(ray.get(refs[1]), large)


def test_a_large_object_read_again_then_freed_is_gone(shared_cluster):
    """Gets of a large object after the first are served from the driver's retained mapping
    (see the store's revocation page); a free still takes it away from this driver."""
    object_id = ray.put(np.arange(2**20, dtype=np.float64))
    for _ in range(3):
        value = ray.get(object_id)
        assert value[-1] == 2**20 - 1 and not value.flags.writeable
        del value
    ray.internal.free([object_id])
    # Not served from the kept mapping again: asked for, it raises Ray's error for a freed
    # object, even when the raylet's view or the GCS's object table has not heard of the
    # removal yet (see docs/decisions.md).
    with pytest.raises(ray.exceptions.ObjectFreedError):
        ray.get(object_id, timeout=30)


def test_an_object_freed_while_its_value_is_held_raises_at_once_and_the_value_stays(shared_cluster):
    """The store keeps an object freed while a reader holds it until the reader lets go,
    and serves it to no one meanwhile: a get of it then raises instead of waiting for
    the holder (here the getter itself)."""
    object_id = ray.put(np.arange(2**20, dtype=np.float64))
    held = ray.get(object_id)
    ray.internal.free([object_id])
    started = time.monotonic()
    with pytest.raises(ray.exceptions.ObjectFreedError):
        ray.get(object_id, timeout=30)
    assert time.monotonic() - started < 5
    assert ray.wait([object_id], timeout=0)[0] == [object_id]  # ready: as its error
    assert held[-1] == 2**20 - 1  # the held value is intact
    del held
    with pytest.raises(ray.exceptions.ObjectFreedError):
        ray.get(object_id, timeout=30)


def test_a_put_goes_from_the_store_when_nothing_here_needs_it(shared_cluster):
    """As in Ray, a `ray.put` goes from the store when the last ObjectRef of it in the
    process that made it goes (a value read from it stays intact and keeps its memory until
    it goes too), and not before the tasks it was passed to are done with it: their results
    have arrived and have no ObjectRef left (a result may be made again from its lineage).
    One whose ID was pickled stays: another process may hold it, and rayd counts no
    references across processes."""
    state = ray.global_state

    def listed(hex_id):
        return bool((state.object_table(hex_id) or {}).get("Locations"))

    def marker_listed():
        # The store reports its changes in order: a put after a removal is listed after it.
        marker = ray.put(array)
        wait_for(lambda: listed(marker.hex()), 10, "a marker put in the object table")

    @ray.remote
    def total(x):
        return float(np.sum(ray.get(x[0]) if isinstance(x, list) else x))

    array = np.arange(2**20, dtype=np.float64)
    dropped = ray.put(array)
    copy = ray.ObjectRef(dropped.binary())  # a second handle of the same object
    as_argument = ray.put(array)
    held_by_result = ray.put(array)
    pickled = ray.put(array)
    held = ray.get(ray.put(array))  # the put's only handle goes at once; its value stays
    result = total.remote(held_by_result)
    assert ray.get(total.remote(as_argument)) == ray.get(total.remote([pickled])) == array.sum()
    assert ray.get(result) == array.sum()
    hex_ids = {name: ref.hex() for name, ref in
               [("dropped", dropped), ("as_argument", as_argument),
                ("held_by_result", held_by_result), ("pickled", pickled)]}
    wait_for(lambda: all(listed(h) for h in hex_ids.values()), 10, "the puts in the object table")
    del dropped, as_argument, held_by_result, pickled

    wait_for(lambda: not listed(hex_ids["as_argument"]), 10,
             "a put whose task is done with it to leave the store")
    marker_listed()
    assert listed(hex_ids["dropped"]), "an object went while a handle of it was left"
    assert listed(hex_ids["held_by_result"]), "an argument went while its task's result was held"
    assert held[-1] == 2**20 - 1

    del copy, result
    wait_for(lambda: not listed(hex_ids["dropped"]) and not listed(hex_ids["held_by_result"]), 10,
             "the puts nothing needs to leave the store")
    marker_listed()
    assert listed(hex_ids["pickled"]), "a pickled put was freed"
    assert held[-1] == 2**20 - 1 and np.array_equal(held, array)


def test_a_task_result_goes_from_the_store_with_its_last_handle(shared_cluster):
    """As in Ray, a task's result in the store goes when the process that submitted the task
    drops its last ObjectRef of it (a value read from it stays intact until it goes too);
    one still referenced, or passed to another task, stays. So a loop of tasks returning
    large arrays does not fill the store (before, every result stayed until the store
    spilled or evicted it)."""
    state = ray.global_state

    def listed(hex_id):
        return bool((state.object_table(hex_id) or {}).get("Locations"))

    def stored():
        return sum(1 for entry in state.object_table().values() if entry["Locations"])

    @ray.remote
    def make(n):
        return np.full(n, 7.0)

    @ray.remote
    def total(a):
        return float(a.sum())

    n = 2**20  # 8 MB: through the store, not inlined
    kept, dropped, passed = make.remote(n), make.remote(n), make.remote(n)
    value = ray.get(dropped)
    assert ray.get(total.remote(passed)) == ray.get(kept).sum() == 7.0 * n
    hex_ids = {"kept": kept.hex(), "dropped": dropped.hex(), "passed": passed.hex()}
    wait_for(lambda: all(listed(h) for h in hex_ids.values()), 10, "the results in the object table")
    del dropped, passed
    assert value[-1] == 7.0 and value.sum() == 7.0 * n, "a value read from a freed result changed"
    del value
    wait_for(lambda: not listed(hex_ids["dropped"]), 10, "a dropped result to leave the store")
    # The store reports its changes in order: a put after the removal is listed after it.
    marker = ray.put(np.ones(n))
    wait_for(lambda: listed(marker.hex()), 10, "a marker put in the object table")
    assert listed(hex_ids["kept"]), "a result went while a handle of it was left"
    assert listed(hex_ids["passed"]), "a result passed to a task went"
    del marker

    before = stored()
    for _ in range(20):
        assert ray.get(make.remote(n))[-1] == 7.0
    wait_for(lambda: stored() <= before + 1, 10, "the results to leave the store")


def test_large_arguments_go_from_the_store_when_their_tasks_are_done(shared_cluster):
    """The SDK puts a large argument into the store for its task; like Ray, it frees it once
    the task's result has arrived and was dropped, so a loop of such calls does not fill the
    store (before, 20 calls left 20 copies of the argument there)."""
    state = ray.global_state

    def stored():
        return sum(1 for entry in state.object_table().values() if entry["Locations"])

    @ray.remote
    def total(a):
        return float(a.sum())

    array = np.ones(2**20)  # 8 MB: put into the store, not inlined
    before = stored()
    for _ in range(20):
        assert ray.get(total.remote(array)) == array.size
    wait_for(lambda: stored() <= before + 1, 10, "the arguments to leave the store")
