#!/usr/bin/env bash
# Table 7 (§7.5, App. B.2): DeepPlanning Travel Planning, Qwen3-1.7B student distilled from a
# Qwen3-14B or Qwen3-32B teacher (thinking on, 15 epochs over 80 % of the travel tasks), scored on
# the other 20 % by the fraction of personalized hard constraints satisfied, Avg@16 and Best@16
# (paper, 14B / 32B teacher: all tokens 11.7 / 12.8 Avg@16; Q3-only 20 % 12.6 / 13.6).
# Rows (the table's, with Figure 4's Soft-OR 20 %): all tokens; entropy-only 50 %, 20 %; Q3-only
# 20 %; Soft-OR 50 %, 20 %: 2 teachers x 6 rows = 12 runs, 8xH200 each (estimated; not stated).
#
#   DEEPPLANNING_DB=/data/database_en bash recipes/paper/table7.sh
#   DRY_RUN=1 bash recipes/paper/table7.sh          # print and validate every command
#
# Training rollouts are agent episodes in eval.deepplanning.env:TravelPlanningEnv (the pair YAMLs);
# evaluation is `eval.run --bench deepplanning_travel` (agent episodes on the held-out split, 16 per
# task); `python -m eval.prepare` writes the 80/20 split. The one input the project cannot make:
# DEEPPLANNING_DB, the travel database (database_en.zip of the Hub data set Qwen/DeepPlanning,
# unzipped: the folder of id_0 ... id_119; default <data root>/DeepPlanning/travelplanning/database).
# Without it a real run stops (exit 3) naming it; a dry run notes it and validates the rest.
# ENTROPY_RULE (default entropy_sample, as Tables 3/5): the rule of the "Entropy-only" rows.
# Environment: see recipes/paper/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ENTROPY_RULE="${ENTROPY_RULE:-entropy_sample}"
if [[ -n "${DEEPPLANNING_DB:-}" ]]; then DEEPPLANNING_DB="$(from_caller "$DEEPPLANNING_DB")"; fi
DEEPPLANNING_DB="${DEEPPLANNING_DB:-$DATA_DIR/DeepPlanning/travelplanning/database}"
export DEEPPLANNING_DB  # eval.run's deepplanning_travel reads it
[[ "$DEEPPLANNING_DB" != *[[:space:]]* ]] || die "DEEPPLANNING_DB must not contain spaces: $DEEPPLANNING_DB"

# The database: a folder per task with every CSV and column (eval.prepare's check, headers only).
if ! db_check="$("$PYTHON" -m eval.prepare --data-dir "$DATA_DIR" --only "" --deepplanning-db "$DEEPPLANNING_DB" 2>&1)"; then
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# note: the DeepPlanning travel database is not usable at DEEPPLANNING_DB=$DEEPPLANNING_DB" \
         "(a real run stops here): $(head -n 2 <<<"$db_check" | tr '\n' ' ')"
  else
    {
      echo "table 7 needs the DeepPlanning travel database (DEEPPLANNING_DB=$DEEPPLANNING_DB): set DEEPPLANNING_DB to the unzipped"
      echo "database_en.zip of the Hub data set Qwen/DeepPlanning (the folder holding id_0 ... id_119)."
      echo "$db_check" | head -n 6
    } >&2
    exit 3
  fi
fi

# Every launch gets the database (and the split it was trained on) as environment options.
EXTRA_OVERRIDES="rollout.environment_options={\"db_dir\":\"$DEEPPLANNING_DB\",\"split_file\":\"$DATA_DIR/deepplanning/split.json\"} $EXTRA_OVERRIDES"

init_table 7 "qwen3-14b-1.7b qwen3-32b-1.7b"
for pair in $TABLE_PAIRS; do
  row "$pair" all 1.0 deepplanning_travel
  for ratio in 0.5 0.2; do
    row "$pair" "$ENTROPY_RULE" "$ratio" deepplanning_travel
  done
  row "$pair" q3 0.2 deepplanning_travel
  for ratio in 0.5 0.2; do
    row "$pair" soft_or "$ratio" deepplanning_travel
  done
done
finish_table
