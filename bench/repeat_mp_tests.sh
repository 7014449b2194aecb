#!/usr/bin/env bash
# Run every multi-process test file N times in a row while a second process keeps the other CPU
# core busy, and print "<file>: <passed>/<N> runs passed" (a failed run's log is kept).
#
#   bash bench/repeat_mp_tests.sh                    # N=20, the default file list
#   N=5 FILES="tests/test_weight_sync.py" bash bench/repeat_mp_tests.sh
#   LOAD=0 ...                                       # no load process (the machine is busy already)
set -uo pipefail
cd "$(dirname "$0")/.."
N="${N:-20}"
PY="${PYTHON:-.venv/bin/python}"
FILES="${FILES:-tests/test_distributed.py tests/test_weight_sync.py tests/tip/test_tip_distributed.py tests/test_sharded_teacher.py tests/test_packing.py tests/test_fused_loss.py}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/opsd_torch_ext}"
LOGS="$(mktemp -d -t mp-repeat.XXXXXX)"

if [ "${LOAD:-1}" != 0 ]; then
    "$PY" -c "while True: pass" &   # the load: one busy core for the whole run
    LOAD_PID=$!
    trap 'kill $LOAD_PID 2>/dev/null' EXIT
fi
t0=$(date +%s)
for f in $FILES; do
    [ -f "$f" ] || { echo "$f: missing, skipped"; continue; }
    ok=0
    for i in $(seq 1 "$N"); do
        log="$LOGS/$(basename "$f" .py)-$i.log"
        if "$PY" -m pytest -q -p no:cacheprovider "$f" >"$log" 2>&1; then ok=$((ok + 1)); rm -f "$log"
        else echo "  $f run $i FAILED: $(tail -n 1 "$log") (log: $log)"; fi
    done
    echo "$f: $ok/$N runs passed (other core busy; $(( $(date +%s) - t0 )) s so far)"
done
