#!/bin/bash
# issue 17 step 1 on the reproduced model: held-out (test) pairs, 40 per task
set -e
cd "$(dirname "$0")/.." && . .venv/bin/activate  # run after mmemb reproduce
R=runs/reproduce-diag; mkdir -p $R
M=runs/reproduce/stage1-selected/final
date
[ -f $R/cands-test.jsonl ] || mmemb reason generate --teacher hints --data mmeb-mini --split test --limit 40 --samples 4 --out $R/cands-test.jsonl
[ -f $R/diag/diagnose.json ] || mmemb reason diagnose --model $M --data mmeb-mini --split test --limit 40 --candidates $R/cands-test.jsonl --max-new-tokens 64 --out $R/diag --quiet
date
