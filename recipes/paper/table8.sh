#!/usr/bin/env bash
# Table 8 (App. B.1): adaptive KL (teacher-entropy-gated top-16 forward-KL term, after
# Entropy-Aware OPD; tip_patches/README.md decision 8) vs standard reverse KL, both under entropy
# sampling at 50/20/10 %, plus the all-token baseline; mean@16 on MATH-500, AIME'24, AIME'25 and
# MATH-DAPO (the held-out 20 % DAPO split of eval.prepare): 1 pair x 7 rows = 7 runs.
#   DRY_RUN=1 bash recipes/paper/table8.sh
# The paper does not say which pair Table 8 used (its 70.7 MATH-500 baseline matches none of
# Table 3's); PAIRS (default qwen3-8b-4b) picks ours. The baseline and entropy-sampling rows are
# Table 3's runs (trained once per OUT; only the MATH-DAPO evaluation is added).
# DAPO_EVAL_LIMIT (default 500; 0 = all ~3.5K problems): MATH-DAPO problems evaluated, 16 samples
# each (not in paper: the paper does not say how much of its DAPO split it evaluated).
# Environment: see recipes/paper/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DAPO_EVAL_LIMIT="${DAPO_EVAL_LIMIT:-500}"
[[ "$DAPO_EVAL_LIMIT" =~ ^[0-9]+$ ]] || die "DAPO_EVAL_LIMIT=$DAPO_EVAL_LIMIT: expected a whole number"

init_table 8 "qwen3-8b-4b"
for pair in $TABLE_PAIRS; do
  row "$pair" all 1.0 math500,aime24,aime25,dapo "$DAPO_EVAL_LIMIT"
  for rule in entropy_sample adaptive_kl; do
    for ratio in 0.5 0.2 0.1; do
      row "$pair" "$rule" "$ratio" math500,aime24,aime25,dapo "$DAPO_EVAL_LIMIT"
    done
  done
done
finish_table
