#!/usr/bin/env bash
# Table 6: Soft-OR top 50 % vs bottom 50 % (the complement), mean@16 on MATH-500, AIME'24, AIME'25:
# 3 pairs x 2 rows = 6 runs (the top-50 % runs are Table 5's, trained once per OUT).
#   DRY_RUN=1 bash recipes/paper/table6.sh
# The table has no all-token column; the pairs' all-token baselines (Table 3's runs) are added to
# the comparison when they exist, so the differences are against all tokens.
# Environment: see recipes/paper/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

init_table 6 "qwen3-8b-4b llama-70b-8b qwen2.5-14b-1.5b"
for pair in $TABLE_PAIRS; do
  context "$OUT/$pair/all-1.0/results.json"
  row "$pair" soft_or 0.5 math500,aime24,aime25
  row "$pair" soft_or_bottom 0.5 math500,aime24,aime25
done
finish_table
