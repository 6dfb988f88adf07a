"""The timeline: when each task was submitted, started and finished, and `ray.profile` spans.

Each process buffers its events and a background thread appends them to its job's GCS list
`rayd:profile:<job>` (one element per event, every `FLUSH_INTERVAL`), so recording costs a
task a list append and never a Redis round trip. Each append trims the list to its last
`MAX_EVENTS` events, so a long job's timeline stays bounded. A process flushes what is left
when it disconnects. `ray.timeline()` reads its job's list back as Chrome trace events.
"""

import json
import os
import threading
import time

from ray._private import worker as _worker

# How often a process writes its buffered events to the GCS.
FLUSH_INTERVAL = 0.2
# The most events a job's timeline keeps (the oldest go first).
MAX_EVENTS = 100_000
# Events per RPUSH.
_PUSH_CHUNK = 1000


def key(job_id):
    """The list of one job's timeline events."""
    return f"rayd:profile:{job_id.hex()}".encode()


class _Recorder:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()
        self.thread = None
        self.stopping = threading.Event()
        self.core = None
        self.registered = False

    def add(self, event):
        core = _worker.global_worker.core
        # The job of the task running now (a worker serves many jobs).
        self.events.append((core.job_id if core is not None else None, event))
        if self.thread is None:
            self._start()

    def _start(self):
        with self.lock:
            core = _worker.global_worker.core
            if self.thread is not None or core is None:
                return
            self.core = core
            self.stopping.clear()
            self.thread = threading.Thread(target=self._run, name="rayd-profile", daemon=True)
            self.thread.start()

    def _run(self):
        while not self.stopping.wait(FLUSH_INTERVAL):
            self.flush()

    def flush(self):
        """Writes the buffered events to the GCS now."""
        with self.lock:
            core = self.core
            if core is None:
                return
            events, self.events = self.events, []
            if not events and self.registered:
                return
            from ray._private import gcs
            try:
                if not self.registered:
                    self.registered = True
                    _register_process(core)
                for job, rows in _encode_by_job(events, core).items():
                    for i in range(0, len(rows), _PUSH_CHUNK):
                        gcs.command("RPUSH", key(job), *rows[i:i + _PUSH_CHUNK], core=core)
                    gcs.command("LTRIM", key(job), -MAX_EVENTS, -1, core=core)
            except Exception:  # noqa: BLE001 - the cluster went away: the events are lost
                pass

    def stop(self):
        """Flushes and stops the writer (the connection is about to close)."""
        thread = self.thread
        if thread is not None:
            self.stopping.set()
            thread.join()
        self.flush()
        with self.lock:
            self.thread = None
            self.core = None
            self.registered = False
            self.events = []


_recorder = _Recorder()


def _component(core):
    return "worker" if _worker.global_worker.mode == _worker.WORKER_MODE else "driver"


def _register_process(core):
    from ray._private import gcs
    info = {"pid": os.getpid(), "node_ip_address": core.node_ip_address, "node_id": core.node_id.hex(),
            "kind": _component(core), "plasma_store_socket": core.plasma_socket,
            "start_time": time.time()}
    gcs.command("HSET", gcs.WORKERS, core.worker_id.hex(), json.dumps(info), core=core)


def _encode_by_job(events, core):
    """The events of a flush by job, each a JSON row `[pid, node_ip_address, component_type,
    event_type, name, task_id, start, end, extra_data]` (rows, not objects: encoding is the
    flush's main cost)."""
    who = [os.getpid(), core.node_ip_address, _component(core)]
    by_job: dict = {}
    for job, event in events:
        if job is None:
            continue
        if event[0] == "submit":
            _, when, object_id, name = event
            row = ["task:submit", name, object_id.task_id().hex(), when, when, None]
        else:
            row = list(event[1:])
        by_job.setdefault(job, []).append(json.dumps(who + row))
    return by_job


def _decode(raw):
    """One stored event, as a dict."""
    e = json.loads(raw)
    return dict(pid=e[0], node_ip_address=e[1], component_type=e[2], event_type=e[3], name=e[4],
                task_id=e[5], start=e[6], end=e[7], extra_data=e[8] or {})


def record_submit(object_id, name):
    """A task was submitted (its first return's ID names it)."""
    _recorder.add(("submit", time.time(), object_id, name))


def record_span(event_type, name, task_id, start, end, extra=None):
    _recorder.add(("span", event_type, name, task_id, start, end, extra))


def flush():
    _recorder.flush()


def stop():
    _recorder.stop()


class profile:
    """`with ray.profile("event", extra_data={...}):` adds a span to the timeline, in the
    row of this worker (or driver). `extra_data` must be JSON-serializable."""

    def __init__(self, event_type, extra_data=None, worker=None):
        self.event_type = event_type
        self.extra_data = dict(extra_data or {})
        self.start = None

    def set_attribute(self, key, value):
        """Adds to the span's extra data (today's Ray)."""
        self.extra_data[key] = value

    def __enter__(self):
        self.start = time.time()
        return self

    def __exit__(self, kind, value, tb):
        worker = _worker.global_worker
        if worker.core is None:
            return
        extra = dict(self.extra_data)
        if kind is not None:
            extra["error"] = f"{kind.__name__}: {value}"
        task = worker.core.current_task_id.hex() if worker.mode == _worker.WORKER_MODE else None
        record_span(self.event_type, self.event_type, task, self.start, time.time(), extra)


def events():
    """The stored events of this driver's job (its last `MAX_EVENTS`), oldest first."""
    from ray._private import gcs
    worker = _worker.global_worker
    worker.check_connected()
    flush()
    return [_decode(raw) for raw in gcs.command("LRANGE", key(worker.core.job_id), 0, -1) or []]


def chrome_tracing(records):
    """Events in the Chrome trace format (chrome://tracing, Perfetto): one process row per
    node, one thread row per worker or driver."""
    trace = []
    for r in records:
        event = {
            "cat": r["event_type"],
            "name": r["name"],
            "pid": f"Node {r['node_ip_address']}",
            "tid": f"{r['component_type']}:{r['pid']}",
            "ts": r["start"] * 1e6,
            "args": dict(r["extra_data"], task_id=r["task_id"]) if r["task_id"] else r["extra_data"],
        }
        if r["event_type"] == "task:submit":
            event.update(ph="i", s="t", name=f"submit {r['name']}")
        else:
            event.update(ph="X", dur=(r["end"] - r["start"]) * 1e6)
        trace.append(event)
    return trace
