#!/bin/bash
# A/B of two rayd builds (or one build under two configurations) on this machine: runs
# bench/run.py for rayd alone, alternating A and B for ROUNDS rounds, pools each side's
# samples and prints bench/compare.py's table (medians, change, spread, U-test p-value).
#
#   bench/ab.sh A_PYTHON B_PYTHON ROUNDS METRICS OUTDIR
#
# A_PYTHON / B_PYTHON: the python of a venv with that build's SDK and release daemons (or a
# wrapper script that sets RAYD_<KEY> variables, then execs such a python). METRICS: a
# comma-separated list of bench/workload.py metric names. OUTDIR gets A.jsonl, B.jsonl,
# the per-round files and logs. Run it on a quiet machine.
set -euo pipefail
if [ $# -ne 5 ]; then sed -n '2,10p' "$0"; exit 2; fi
A=$1 B=$2 ROUNDS=$3 METRICS=$4 OUT=$5
BENCH=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/raw"
rm -f "$OUT/A.jsonl" "$OUT/B.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    for side in A B; do
        python=$A; [ "$side" = B ] && python=$B
        label=$side-$round
        python3 "$BENCH/run.py" --rounds 1 --systems rayd --rayd-python "$python" --no-plasma \
            --only "$METRICS" --label "$label" --out "$OUT/raw" > "$OUT/raw/$label.log" 2>&1
        # The first run line heads the pooled file; the result lines of every round follow.
        if [ "$round" = 1 ]; then head -n 1 "$OUT/raw/$label.jsonl" > "$OUT/$side.jsonl"; fi
        grep -v '"kind": "run"' "$OUT/raw/$label.jsonl" >> "$OUT/$side.jsonl"
    done
done
cd "$BENCH" && python3 compare.py "$OUT/A.jsonl" "$OUT/B.jsonl" --system rayd --markdown
