#!/usr/bin/env bash
# Regenerate the precomputed margins the demo opens with (assets/margins/), using the engine's own CLI.
#
# Implicit margins follow DM (methods §1.4): a LoRA proxy of the default model, DPO-trained for 2 epochs on a
# random 10 % seed subset, scored against its reference (adapters disabled). External margins: the data's GPT-4
# scores for UltraFeedback; the built-in stand-in reward head (cross-fitted) for HH-RLHF, which has no scores.
# CPU settings (fp32: bf16 autocast is far slower on CPUs without AVX-512 BF16; 256-token pairs). Measured on 2 cores,
# 2026-11-23: UltraFeedback 23 min warm-up + 36 min scoring, HH-RLHF 12 + 33 min (one thread each, side by side).
# A finished warm-up proxy with the same settings is reused. On a GPU raise --max-length.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-.venv/bin/dpo-engine}
COMMON=(--model smollm2-135m-instruct --dtype fp32 --max-length 256 --max-prompt-length 128 --batch-size 8
        --warmup-epochs 2 --seed 42)

"$ENGINE" score assets/data/ultrafeedback_binarized_scored_1200.jsonl --external dataset \
  --out assets/margins/ultrafeedback.parquet --warmup-dir "${MARGIN_LAB_HOME:-.margin_lab}/warmup/ultrafeedback" "${COMMON[@]}"
"$ENGINE" score assets/data/hh_rlhf_helpful_base_test_1000.jsonl --external builtin \
  --out assets/margins/hh_rlhf.parquet --warmup-dir "${MARGIN_LAB_HOME:-.margin_lab}/warmup/hh_rlhf" "${COMMON[@]}"
