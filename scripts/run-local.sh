#!/usr/bin/env bash
# `make run`: runs every program of the seed document (examples/) against a fresh local
# cluster (ray.init() starts one per program), then starts a head node by hand with
# `rayd start`, shows `rayd status`, and stops it again (also on failure or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

python=.venv/bin/python
rayd=.venv/bin/rayd

for program in examples/*.py; do
  echo "== $program"
  "$python" "$program"
done

temp_dir=$(mktemp -d /tmp/rayd-run.XXXXXX)
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  "$rayd" stop --temp-dir "$temp_dir" || true
  rm -rf "$temp_dir"
}
trap cleanup EXIT

echo
echo "== rayd start --head"
"$rayd" start --head --redis-port "$port" --num-redis-shards 2 --object-manager-port 0 --temp-dir "$temp_dir"
echo
"$rayd" status --temp-dir "$temp_dir"
echo
