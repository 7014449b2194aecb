#!/usr/bin/env bash
# Table 5: Soft-OR Top-K (ĥ + δ̂ − ĥ·δ̂, Eq. 5-7) vs entropy-only at 50 % and 20 %, and all tokens
# (mean@16 on MATH-500, AIME'24, AIME'25): 3 pairs x 5 rows = 15 runs.
#   DRY_RUN=1 bash recipes/paper/table5.sh
# ENTROPY_RULE (default entropy_sample): the paper's "Entropy-only" columns repeat Table 3's
# entropy-sampling numbers, so by default those rows are Table 3's runs (trained once per OUT);
# ENTROPY_RULE=entropy_topk trains deterministic entropy Top-K instead (Eq. 6 with δ̂ = 0).
# Environment: see recipes/paper/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ENTROPY_RULE="${ENTROPY_RULE:-entropy_sample}"
[[ "$ENTROPY_RULE" == entropy_sample || "$ENTROPY_RULE" == entropy_topk ]] ||
  die "ENTROPY_RULE=$ENTROPY_RULE: choose entropy_sample or entropy_topk"

init_table 5 "qwen3-8b-4b llama-70b-8b qwen2.5-14b-1.5b"
for pair in $TABLE_PAIRS; do
  row "$pair" all 1.0 math500,aime24,aime25
  for ratio in 0.5 0.2; do
    row "$pair" "$ENTROPY_RULE" "$ratio" math500,aime24,aime25
  done
  for ratio in 0.5 0.2; do
    row "$pair" soft_or "$ratio" math500,aime24,aime25
  done
done
finish_table
