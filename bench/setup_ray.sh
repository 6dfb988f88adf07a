#!/usr/bin/env bash
# Create bench/.venv-ray with the newest Ray from PyPI (the yardstick rayd is measured against).
# Idempotent: does nothing when the venv already imports ray, numpy and psutil.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-ray"
python="${PYTHON:-python3}"

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import ray, numpy, psutil" 2>/dev/null; then
    exit 0
fi

echo "bench: creating $venv with the newest Ray from PyPI" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --upgrade ray numpy psutil
"$venv/bin/python" -c "import ray; print('bench: ray', ray.__version__, 'installed', file=__import__('sys').stderr)"
