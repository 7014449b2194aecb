# Shared by recipes/paper/table{3..8}.sh (sourced, not run). One "row" of a paper table is one
# training run (pair x rule x ratio), launched with `python -m opsd.launch`, then evaluated with
# `python -m eval.run` on its exported student; the table ends with `python -m eval.compare`.
#
# Environment (all optional):
#   DRY_RUN=1         print every command and validate every launch with the launcher's --dry-run
#                     (config + world-size checks), every eval/compare command's options, and say
#                     which data files are missing; starts nothing, needs no GPU and no network.
#   NPROC             processes (GPUs) per node; default per pair: 8 (Qwen3, Llama, agentic), 4 (Qwen2.5)
#   HOSTFILE          DeepSpeed hostfile ('host slots=N' lines) for multi-node runs; with it LAUNCHER
#                     defaults to deepspeed (one command starts every node)
#   OUT               output root (default outputs/paper): OUT/<pair>/<rule>-<ratio>/{export,results.json},
#                     OUT/table<N>.md and .png. Rows shared by several tables (e.g. the all-token
#                     baselines) are trained once: a row whose export exists is not retrained.
#   PAIRS             space-separated subset of the table's model pairs (keys of eval.paper_tables.PAIRS)
#   EXTRA_OVERRIDES   section.key=value words added to every launch (e.g. "train.max_steps=100")
#   LAUNCHER          torchrun | deepspeed
#   PYTHON            interpreter (default: python, else python3)
#   EVAL_TP           vLLM tensor-parallel size of eval.run (default 1)
#   OPSD_DATA_DIR     data root written by `python -m eval.prepare` (default data)
set -euo pipefail

PAPER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$PAPER_DIR/../.." && pwd)"
# Paths given by the caller (OUT, HOSTFILE, OPSD_DATA_DIR) are relative to the caller's folder;
# the defaults are relative to the repository root, where everything below runs.
CALLER_PWD="$PWD"
from_caller() { if [[ -n "$1" && "$1" != /* ]]; then echo "$CALLER_PWD/$1"; else echo "$1"; fi; }
OUT="$(from_caller "${OUT:-}")"
HOSTFILE="$(from_caller "${HOSTFILE:-}")"
if [[ -n "${OPSD_DATA_DIR:-}" ]]; then OPSD_DATA_DIR="$(from_caller "$OPSD_DATA_DIR")"; export OPSD_DATA_DIR; fi
if [[ -n "${PYTHON:-}" && "$PYTHON" == */* ]]; then PYTHON="$(from_caller "$PYTHON")"; fi
cd "$REPO_ROOT"  # YAML paths and data/ are relative to the repository root (same on every node)

PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
DRY_RUN="${DRY_RUN:-0}"
OUT="${OUT:-outputs/paper}"
NPROC="${NPROC:-}"
LAUNCHER="${LAUNCHER:-$([[ -n "$HOSTFILE" ]] && echo deepspeed || echo torchrun)}"
EXTRA_OVERRIDES="${EXTRA_OVERRIDES:-}"
EVAL_TP="${EVAL_TP:-1}"
DATA_DIR="${OPSD_DATA_DIR:-data}"
# The `tip` config section is a plugin; this also works in a checkout that is not pip-installed.
export OPSD_PLUGINS="${OPSD_PLUGINS:-tip_patches.plugin}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
if [[ "$DRY_RUN" == 1 ]]; then
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # a dry run never downloads anything
fi

SEP=$'\x1f'  # argument separator in the dry-run plan file (never inside an argument)

die() { echo "error: $*" >&2; exit 2; }

# quote CMD...: the command as one shell line, quoting only the words that need it.
quote() {
  local w out=()
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then out+=("$w"); else out+=("$(printf '%q' "$w")"); fi
  done
  echo "${out[*]}"
}

# Per-pair settings that are not config options: processes per node (Table 9: 8xH200, 4xH200 for
# Qwen2.5) and eval.run's chat-template switch, which must match the YAML's data.enable_thinking.
pair_nproc() {
  case "$1" in
    qwen2.5-14b-1.5b) echo 4 ;;
    *) echo 8 ;;
  esac
}
pair_eval_args() {
  case "$1" in
    qwen3-8b-4b) echo "--enable-thinking false" ;;
    qwen3-14b-1.7b | qwen3-32b-1.7b) echo "--enable-thinking true" ;;
    *) echo "" ;;
  esac
}
pair_train_file() {  # relative to the data root, as in the pair's YAML
  case "$1" in
    qwen3-14b-1.7b | qwen3-32b-1.7b) echo "deepplanning/travel_train.jsonl" ;;
    *) echo "dapo/train.jsonl" ;;
  esac
}

# init_table N "default pairs": start a table; PAIRS from the environment narrows the pairs.
init_table() {
  TABLE="$1"
  TABLE_PAIRS="${PAIRS:-$2}"
  RESULTS=()          # results files of the rows, in row order (a pair's baseline first)
  CONTEXT=()          # results files shown in the comparison if they exist (not rows)
  PLAN_KIND=()        # launch | eval
  PLAN_CMD=()         # the command, arguments joined by $SEP
  PLAN_RUN=()         # the run folder of a launch (skipped when its export exists)
  DATA_BENCHES=""
  DATA_TRAIN=""
  for p in $TABLE_PAIRS; do
    [[ -f "$PAPER_DIR/$p.yaml" ]] || die "PAIRS: no recipe recipes/paper/$p.yaml for pair '$p'"
  done
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# table $TABLE: dry run (DRY_RUN=1): commands are printed and validated, nothing starts"
  elif ! command -v nvidia-smi >/dev/null 2>&1; then
    die "table $TABLE needs GPUs (nvidia-smi not found); DRY_RUN=1 prints and validates the plan without them"
  fi
}

# plan KIND RUN CMD...: print a command and queue it (RUN: the run folder of a launch, else "").
plan() {
  local kind="$1" run="$2"; shift 2
  echo "[$kind] $(quote "$@")"
  local IFS="$SEP"
  PLAN_KIND+=("$kind"); PLAN_RUN+=("$run"); PLAN_CMD+=("$*")
}

add_data() {  # remember which data files the table needs (checked before a real run)
  DATA_BENCHES="${DATA_BENCHES:+$DATA_BENCHES,}$1"
  [[ " $DATA_TRAIN " == *" $2 "* ]] || DATA_TRAIN="$DATA_TRAIN $2"
}

# row PAIR RULE RATIO BENCHES [DAPO_LIMIT]: one training run, evaluated on BENCHES (comma list).
# With DAPO_LIMIT > 0 the `dapo` benchmark is evaluated by a second eval.run call on its first
# DAPO_LIMIT problems, into the same results file.
row() {
  local pair="$1" rule="$2" ratio="$3" benches="$4" dapo_limit="${5:-0}"
  local run="$OUT/$pair/$rule-$ratio"
  local -a launch=("$PYTHON" -m opsd.launch --config "recipes/paper/$pair.yaml" --launcher "$LAUNCHER")
  if [[ -n "$HOSTFILE" ]]; then launch+=(--hostfile "$HOSTFILE"); fi
  if [[ -n "$NPROC" || -z "$HOSTFILE" ]]; then launch+=(--nproc-per-node "${NPROC:-$(pair_nproc "$pair")}"); fi
  launch+=("train.output_dir=$run")
  if [[ "$rule" != all ]]; then launch+=("tip.rule=$rule" "tip.ratio=$ratio"); fi
  if [[ -n "${OPSD_DATA_DIR:-}" ]]; then launch+=("data.train_files=$DATA_DIR/$(pair_train_file "$pair")"); fi
  # shellcheck disable=SC2206  # EXTRA_OVERRIDES is a list of words by design
  launch+=($EXTRA_OVERRIDES)

  local main_benches="$benches"
  if [[ "$dapo_limit" -gt 0 ]]; then main_benches="$(tr ',' '\n' <<<"$benches" | grep -vx dapo | paste -sd, -)"; fi
  # shellcheck disable=SC2207
  local -a common=(--n 16 --temperature 1.0 --top-p 1.0 --backend vllm --tensor-parallel-size "$EVAL_TP"
                   --out "$run/results.json" --tag "pair=$pair" --tag "rule=$rule" --tag "ratio=$ratio"
                   --tag "name=$pair/$rule-$ratio" --no-progress $(pair_eval_args "$pair"))
  if [[ -n "${OPSD_DATA_DIR:-}" ]]; then common+=(--data-dir "$DATA_DIR"); fi

  echo "## table $TABLE row: $pair | rule=$rule | ratio=$ratio -> $run"
  plan launch "$run" "${launch[@]}"
  plan eval "" "$PYTHON" -m eval.run --model "$run/export" --bench "$main_benches" "${common[@]}"
  if [[ "$dapo_limit" -gt 0 && ",$benches," == *,dapo,* ]]; then
    plan eval "" "$PYTHON" -m eval.run --model "$run/export" --bench dapo --limit "$dapo_limit" "${common[@]}"
  fi
  add_data "$benches" "$(pair_train_file "$pair")"
  RESULTS+=("$run/results.json")
}

# context FILE: a results file shown in the comparison when it exists, without being a row of the
# table (e.g. the all-token baselines beside Table 6, which has no baseline column).
context() { CONTEXT+=("$1"); }

# compare_cmd: fills COMPARE with the eval.compare command over the rows (and existing context).
compare_cmd() {
  local -a have=()
  local f
  for f in "${CONTEXT[@]}"; do
    if [[ -f "$f" ]]; then have+=("$f"); else echo "# context $f: not there (yet), left out"; fi
  done
  # Context first: eval.compare takes a pair's baseline from the first file when its pair matches.
  COMPARE=("$PYTHON" -m eval.compare "${have[@]}" "${RESULTS[@]}" --table "$TABLE"
           --out "$OUT/table$TABLE.md" --plot "$OUT/table$TABLE.png")
  echo "## table $TABLE: comparison with the paper's numbers"
  echo "[compare] $(quote "${COMPARE[@]}")"
}

# finish_table: dry run -> validate the plan; real run -> check the data, run the rows in order
# (a launch is skipped when its export exists; eval.run resumes), then compare with the paper.
finish_table() {
  local i
  if [[ "$DRY_RUN" == 1 ]]; then
    compare_cmd
    local plan_file rc=0
    plan_file="$(mktemp "${TMPDIR:-/tmp}/opsd-table$TABLE-plan.XXXXXX")"
    for i in "${!PLAN_CMD[@]}"; do printf '%s\n' "${PLAN_KIND[$i]}$SEP${PLAN_CMD[$i]}" >>"$plan_file"; done
    (IFS="$SEP"; printf '%s\n' "compare$SEP${COMPARE[*]}") >>"$plan_file"
    "$PYTHON" "$PAPER_DIR/tools.py" plan "$plan_file" --data-dir "$DATA_DIR" \
      ${ALLOW_UNKNOWN_BENCH:+--allow-unknown-bench} || rc=$?
    rm -f "$plan_file"
    ((rc == 0)) || die "table $TABLE: the dry run found problems (above)"
    echo "# table $TABLE: dry run OK: ${#RESULTS[@]} runs validated"
    return 0
  fi
  # shellcheck disable=SC2086
  "$PYTHON" "$PAPER_DIR/tools.py" data --data-dir "$DATA_DIR" --bench "$DATA_BENCHES" $DATA_TRAIN
  local -a argv
  for i in "${!PLAN_CMD[@]}"; do
    IFS="$SEP" read -r -a argv <<<"${PLAN_CMD[$i]}"
    if [[ "${PLAN_KIND[$i]}" == launch && -f "${PLAN_RUN[$i]}/export/config.json" ]]; then
      echo "[skip] ${PLAN_RUN[$i]}/export exists: trained already (delete it to retrain)"
      continue
    fi
    echo "[run] $(quote "${argv[@]}")"
    "${argv[@]}"
  done
  compare_cmd
  "${COMPARE[@]}"
  if [[ "$TABLE" == 3 || "$TABLE" == 4 ]]; then  # the tables' peak-memory rows
    { echo; "$PYTHON" "$PAPER_DIR/tools.py" peak-mem --table "$TABLE" "${RESULTS[@]}"; } >>"$OUT/table$TABLE.md"
  fi
  echo "table $TABLE: report $OUT/table$TABLE.md, plot $OUT/table$TABLE.png"
}
