"""The `ray` command: Ray 0.5's `ray start` / `ray stop` flags, run as `rayd`'s own.

    ray start --head --redis-port 6379 --num-redis-shards 2 --redis-shard-ports 6380,6381
    ray start --redis-address 10.0.0.1:6379
    ray stop

Flags that `rayd start` has pass through; configuration keys it has no flag for
(`--redis-shard-ports`, `--redis-max-clients`, `--plasma-directory`, `--huge-pages`) are
given to it as `RAYD_<KEY>` variables; flags of Ray's that mean nothing on rayd
(`--no-ui`, `--use-raylet`, ...) are accepted with a warning.
"""

import argparse
import os
import shutil
import sys

# Flags of Ray 0.5 that rayd has no use for: accepted, and said to be ignored.
_IGNORED_FLAGS = {"--no-ui": 0, "--use-raylet": 0, "--autoscaling-config": 1,
                  "--plasma-store-socket-name": 1, "--raylet-socket-name": 1,
                  "--internal-config": 1}


def _rayd():
    """The rayd binary: beside this Python (a wheel installs it there), or on PATH."""
    candidates = [os.environ.get("RAYD_BIN_DIR"), os.path.dirname(sys.executable),
                  os.path.join(sys.prefix, "bin")]
    for directory in candidates:
        if directory and os.access(os.path.join(directory, "rayd"), os.X_OK):
            return os.path.join(directory, "rayd")
    found = shutil.which("rayd")
    if found is None:
        raise SystemExit("ray: cannot find the `rayd` binary (install rayd, or set RAYD_BIN_DIR)")
    return found


def _start_parser():
    p = argparse.ArgumentParser(prog="ray start", description="Start this machine's rayd daemons.")
    p.add_argument("--head", action="store_true")
    p.add_argument("--redis-address", "--address")
    p.add_argument("--redis-port", type=int)
    p.add_argument("--num-redis-shards", type=int)
    p.add_argument("--redis-shard-ports", help="comma-separated ports of the shards")
    p.add_argument("--redis-max-clients", type=int)
    p.add_argument("--redis-password")
    p.add_argument("--node-ip-address")
    p.add_argument("--object-manager-port", type=int)
    p.add_argument("--object-store-memory", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--num-cpus", type=float)
    p.add_argument("--num-gpus", type=float)
    p.add_argument("--resources")
    p.add_argument("--plasma-directory")
    p.add_argument("--huge-pages", action="store_true")
    p.add_argument("--temp-dir")
    p.add_argument("--block", action="store_true")
    p.add_argument("--include-webui", action="store_true", help="run the dashboard (head)")
    return p


def translate(argv):
    """`(rayd arguments, extra environment, warnings)` for a `ray` command line."""
    if not argv or argv[0] in ("-h", "--help"):
        return ["--help"], {}, []
    command, rest = argv[0], argv[1:]
    if command != "start":
        # stop, status, ...: the same words on rayd.
        return [command, *rest], {}, []
    warnings, kept = [], []
    i = 0
    while i < len(rest):
        flag = rest[i].split("=", 1)[0]
        if flag in _IGNORED_FLAGS:
            takes = _IGNORED_FLAGS[flag] if "=" not in rest[i] else 0
            warnings.append(f"ray start: {flag} has no effect on rayd; ignored")
            i += 1 + takes
            continue
        kept.append(rest[i])
        i += 1
    args = _start_parser().parse_args(kept)
    out, env = ["start"], {}
    if args.head:
        out.append("--head")
    for name in ("redis_address", "redis_port", "num_redis_shards", "redis_password", "node_ip_address",
                 "object_manager_port", "object_store_memory", "num_workers", "num_cpus", "num_gpus",
                 "resources", "temp_dir"):
        value = getattr(args, name)
        if value is not None:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            out += [f"--{name.replace('_', '-')}", str(value)]
    if args.block:
        out.append("--block")
    if args.include_webui:
        out.append("--include-webui")
    if args.redis_shard_ports is not None:
        ports = [p.strip() for p in args.redis_shard_ports.split(",") if p.strip()]
        env["RAYD_REDIS_SHARD_PORTS"] = ",".join(ports)
        if args.num_redis_shards is None:
            out += ["--num-redis-shards", str(len(ports))]
    if args.redis_max_clients is not None:
        env["RAYD_REDIS_MAX_CLIENTS"] = str(args.redis_max_clients)
    if args.plasma_directory is not None:
        env["RAYD_PLASMA_DIRECTORY"] = args.plasma_directory
    if args.huge_pages:
        env["RAYD_HUGE_PAGES"] = "true"
    return out, env, warnings


def main(argv=None):
    """Runs `rayd` with the translated command line (replacing this process)."""
    rayd_args, env, warnings = translate(sys.argv[1:] if argv is None else argv)
    for warning in warnings:
        print(warning, file=sys.stderr)
    rayd = _rayd()
    os.execve(rayd, [rayd, *rayd_args], {**os.environ, **env})


if __name__ == "__main__":
    main()
