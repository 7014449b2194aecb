#!/usr/bin/env bash
# Table 4: Q3-only selection (low student entropy, high teacher-student divergence; score
# (1 - ĥ)·forward KL, §7.3) keeping 20 % and 10 % of tokens vs all tokens (mean@16 on MATH-500,
# AIME'24, AIME'25): 3 pairs x 3 rows = 9 runs (the baselines are Table 3's, trained once per OUT).
#   DRY_RUN=1 bash recipes/paper/table4.sh
# Environment: see recipes/paper/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

init_table 4 "qwen3-8b-4b llama-70b-8b qwen2.5-14b-1.5b"
for pair in $TABLE_PAIRS; do
  row "$pair" all 1.0 math500,aime24,aime25
  for ratio in 0.2 0.1; do
    row "$pair" q3 "$ratio" math500,aime24,aime25
  done
done
finish_table
