#!/usr/bin/env bash
# Every GPU measurement the GPU issues ask for, in one go, each output also saved to DIR: the goals' checks
# first (the whole-process ratio on 300,000 rows against sentence-transformers .half() at batch 512, with
# sbert's device path alone and its kernels; out-of-memory recovery on 60,000 rows of 256 tokens forced into
# one batch; start-up: a one-row encode whole, goal 4 s), then sbert's defaults against .half() at batch 32/128/512 on 100,000 rows. About nine minutes
# on one H200, so a run cut short still has the goals' figures.
#   bash tests/gpu_checks.sh DIR
set -uo pipefail
out=${1:?usage: tests/gpu_checks.sh DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
python3 -m tests.benchmark --device cuda --rows 300000 --contenders sbert-auto,st-fp16-512 --profile 2>&1 | tee "$out/bench-300k.txt"
python3 -m tests.benchmark --device cuda --oom-check 2>&1 | tee "$out/oom-check.txt"
python3 -m tests.benchmark --device cuda --startup 2>&1 | tee "$out/startup.txt"
python3 -m tests.benchmark --device cuda --rows 100000 2>&1 | tee "$out/bench-100k.txt"
