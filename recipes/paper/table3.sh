#!/usr/bin/env bash
# Table 3: entropy-based sampling at retention ratios 50/20/10 % vs all tokens (mean@16 on
# MATH-500, AIME'24, AIME'25), three model pairs: 3 pairs x 4 rows = 12 runs.
#   DRY_RUN=1 bash recipes/paper/table3.sh      # print + validate, no GPU
#   NPROC=8 OUT=outputs/paper bash recipes/paper/table3.sh
# Environment: see recipes/paper/common.sh. The peak-memory rows come from each run's
# metrics.jsonl and are appended to the report (recipes/paper/tools.py peak-mem).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

init_table 3 "qwen3-8b-4b llama-70b-8b qwen2.5-14b-1.5b"
for pair in $TABLE_PAIRS; do
  row "$pair" all 1.0 math500,aime24,aime25
  for ratio in 0.5 0.2 0.1; do
    row "$pair" entropy_sample "$ratio" math500,aime24,aime25
  done
done
finish_table
