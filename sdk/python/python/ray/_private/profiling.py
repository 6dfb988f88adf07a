"""The timeline: when each task was submitted, started and finished, and `ray.profile` spans.

Each process buffers its events and a background thread appends them to the GCS list
`rayd:profile` (one JSON document per flush, every `FLUSH_INTERVAL`), so recording costs a
task a list append and never a Redis round trip. A process flushes what is left when it
disconnects. `ray.timeline()` reads the list back as Chrome trace events.
"""

import json
import os
import threading
import time

from ray._private import worker as _worker

# How often a process writes its buffered events to the GCS.
FLUSH_INTERVAL = 0.2


class _Recorder:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()
        self.thread = None
        self.stopping = threading.Event()
        self.core = None
        self.registered = False

    def add(self, event):
        self.events.append(event)
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
                if events:
                    gcs.command("RPUSH", gcs.PROFILE, _encode_batch(events, core), core=core)
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


def _encode_batch(events, core):
    """One JSON document for a flush: who recorded, then a row per event
    `[event_type, name, task_id, start, end, extra_data]` (rows, not objects, as encoding
    is the flush's main cost)."""
    rows = []
    for event in events:
        if event[0] == "submit":
            _, when, object_id, name = event
            rows.append(["task:submit", name, object_id.task_id().hex(), when, when, None])
        else:
            rows.append(list(event[1:]))
    return json.dumps({"pid": os.getpid(), "node_ip_address": core.node_ip_address,
                       "component_type": _component(core), "events": rows})


def _decode_batch(raw):
    """The events of one flush, as dicts."""
    batch = json.loads(raw)
    who = {k: batch[k] for k in ("pid", "node_ip_address", "component_type")}
    return [dict(who, event_type=e[0], name=e[1], task_id=e[2], start=e[3], end=e[4], extra_data=e[5] or {})
            for e in batch["events"]]


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
    """Every stored event, oldest first."""
    from ray._private import gcs
    worker = _worker.global_worker
    worker.check_connected()
    flush()
    records = []
    for batch in gcs.command("LRANGE", gcs.PROFILE, 0, -1) or []:
        records.extend(_decode_batch(batch))
    return records


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
