"""The deploy test's driver: attaches to the cluster of the node it runs on and runs tasks
that need each node's own resource (so each runs on its node), passing a 2 MiB argument
between nodes, each task making a temp file. Prints one JSON line; exits 1 on any failure.
    driver.py ADDRESS [NODE_IP]   (ADDRESS: "auto" or the head's host:port)"""
import json
import os
import socket
import sys
import tempfile

import ray

# Each node of the lab offers one unit of a resource named after it.
NODES = {"head1": "on_head1", "worker1": "on_worker1", "worker2": "on_worker2"}


def where(blob):
    fd, path = tempfile.mkstemp()
    os.close(fd)
    os.unlink(path)
    return {"host": socket.gethostname(), "bytes": len(blob), "temp": path,
            "node_id": os.environ.get("RAYD_NODE_ID")}


def main():
    address = sys.argv[1]
    kwargs = {"node_ip_address": sys.argv[2]} if len(sys.argv) > 2 else {}
    ray.init(address=address, **kwargs)
    blob = ray.put(b"x" * (2 << 20))
    refs = {host: ray.remote(resources={res: 1})(where).remote(blob) for host, res in NODES.items()}
    got = {host: ray.get(ref, timeout=60) for host, ref in refs.items()}
    print(json.dumps(got))
    ok = all(r["host"] == host and r["bytes"] == 2 << 20 for host, r in got.items())
    ray.shutdown()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
