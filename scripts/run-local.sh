#!/usr/bin/env bash
# `make run`: starts a local head node from target/debug on a free port in a temp dir,
# shows `rayd status`, and stops it again (also on failure or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

rayd=target/debug/rayd
temp_dir=$(mktemp -d /tmp/rayd-run.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cleanup() {
  "$rayd" stop --temp-dir "$temp_dir" || true
  rm -rf "$temp_dir"
}
trap cleanup EXIT

"$rayd" start --head --redis-port "$port" --num-redis-shards 2 --temp-dir "$temp_dir"
echo
"$rayd" status --temp-dir "$temp_dir"
echo
