"""`ray.global_state` (Ray 0.5's view of the GCS tables), `ray.timeline`, `ray.error_info`."""

import json
import os
from typing import Any, Dict, List, Optional

from ray._private import gcs
from ray._private import profiling
from ray._private import worker as _worker


def _hex_or_none(raw):
    text = raw.decode() if raw else ""
    return text or None


class GlobalState:
    """The cluster's tables as Ray 0.5's `ray.global_state` showed them, read from the GCS."""

    def _check(self):
        _worker.global_worker.check_connected()
        if _worker.global_worker.core is None:
            raise _worker.exceptions.RaySystemError("ray.global_state has no cluster in LOCAL_MODE")

    def client_table(self):
        """The nodes (Ray 0.5's "clients"): a list of dicts, as `ray.nodes()`."""
        self._check()
        return _worker.global_worker.core.nodes()

    def _entries(self, table):
        """key ID (hex) -> fields, over every shard."""
        entries = {}
        prefix = f"rayd:{table}:"
        for shard in gcs.shards():
            for key in gcs.scan_keys(f"{prefix}*", shard):
                fields = gcs.hash_to_dict(gcs.command("HGETALL", key, shard=shard))
                if fields:
                    entries[key.decode()[len(prefix):]] = fields
        return entries

    def task_table(self, task_id=None):
        """task ID (hex) -> {"State", "NodeID", "UpdatedMs", and from the timeline
        "FunctionName", "SubmitTime", "StartTime", "EndTime" (seconds) when recorded}."""
        self._check()
        times: Dict[str, Dict[str, Any]] = {}
        for record in profiling.events():
            if record.get("task_id") is None:
                continue
            entry = times.setdefault(record["task_id"], {})
            entry.setdefault("FunctionName", record["name"])
            if record["event_type"] == "task:submit":
                entry["SubmitTime"] = record["start"]
            elif record["event_type"] == "task":
                entry["StartTime"], entry["EndTime"] = record["start"], record["end"]
        table = {}
        for task, fields in self._entries("task").items():
            table[task] = {
                "TaskID": task,
                "State": fields.get("state", b"").decode(),
                "NodeID": _hex_or_none(fields.get("node")),
                "UpdatedMs": int(fields.get("updated_ms", b"0")),
                **times.get(task, {}),
            }
        if task_id is not None:
            key = task_id if isinstance(task_id, str) else task_id.hex()
            return table.get(key)
        return table

    def object_table(self, object_id=None):
        """object ID (hex) -> {"ObjectID", "DataSize", "Locations" (node IDs)}: the objects
        in the object stores."""
        self._check()
        table = {}
        for obj, fields in self._entries("object").items():
            table[obj] = {
                "ObjectID": obj,
                "DataSize": int(fields.get("size", b"0")),
                "Locations": sorted(k[len("node:"):] for k in fields if k.startswith("node:")),
            }
        if object_id is not None:
            return table.get(object_id if isinstance(object_id, str) else object_id.hex())
        return table

    def function_table(self, function_id=None):
        """function ID (hex) -> {"FunctionID", "Name", "JobID"}: every exported remote
        function and actor class."""
        self._check()
        table = {}
        for raw in gcs.command("SMEMBERS", "rayd:functions") or []:
            function = raw.decode()
            name, job = gcs.command("HMGET", f"rayd:function:{function}", "name", "job",
                                    shard=bytes.fromhex(function))
            table[function] = {"FunctionID": function, "Name": (name or b"").decode(),
                               "JobID": (job or b"").decode()}
        if function_id is not None:
            return table.get(function_id if isinstance(function_id, str) else function_id.hex())
        return table

    def cluster_resources(self):
        import ray
        return ray.cluster_resources()

    def available_resources(self):
        import ray
        return ray.available_resources()

    def workers(self):
        """worker ID (hex) -> {"pid", "node_ip_address", "node_id", "kind" (worker or
        driver), "plasma_store_socket", "start_time"}: every process that ran a task or
        submitted one (each registers itself when it first records an event)."""
        self._check()
        profiling.flush()
        reply = gcs.command("HGETALL", gcs.WORKERS)
        return {k: json.loads(v) for k, v in gcs.hash_to_dict(reply).items()}

    def log_files(self):
        """node IP -> {file name: [lines]}: the logs of the nodes on this machine."""
        self._check()
        logs: Dict[str, Dict[str, List[str]]] = {}
        for node in self.client_table():
            socket = node["RayletSocketName"]
            if not node["Alive"] or not os.path.exists(socket):
                continue
            # <temp_dir>/sockets/raylet; the logs are in <temp_dir>/session_latest/logs.
            directory = os.path.join(os.path.dirname(os.path.dirname(socket)), "session_latest", "logs")
            files = logs.setdefault(node["NodeManagerAddress"], {})
            for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
                path = os.path.join(directory, name)
                if os.path.isfile(path):
                    with open(path, errors="replace") as f:
                        files[path] = f.read().splitlines()
        return logs

    def chrome_tracing_dump(self, filename=None):
        """The timeline in the Chrome trace format: written to `filename` (open it in
        chrome://tracing or https://ui.perfetto.dev), or returned when no file is given."""
        self._check()
        trace = profiling.chrome_tracing(profiling.events())
        if filename is None:
            return trace
        with open(filename, "w") as f:
            json.dump(trace, f)
        return None


global_state = GlobalState()


def timeline(filename: Optional[str] = None) -> Optional[List[Dict[str, Any]]]:
    """Today's spelling of `ray.global_state.chrome_tracing_dump`."""
    return global_state.chrome_tracing_dump(filename)


def error_info() -> List[Dict[str, Any]]:
    """The errors pushed to this driver, oldest first: dicts with "type", "message" and
    "timestamp" (seconds). Failed tasks, a function that could not be pickled or loaded,
    a function too large."""
    worker = _worker.global_worker
    worker.check_connected()
    if worker.core is None:
        return []
    records = gcs.command("LRANGE", gcs.errors_key(worker.core.job_id), 0, -1) or []
    errors = []
    for raw in records:
        record = json.loads(raw)
        errors.append({"type": record["kind"], "message": record["message"],
                       "timestamp": record["time_ms"] / 1000})
    return errors
