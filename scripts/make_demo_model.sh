#!/usr/bin/env bash
# Regenerates the bundled demo model end to end, deterministically (fixed seed, fixed epoch count,
# 2 CPU threads; about 25 minutes on 2 cores):
#   synthetic conveyor data (out/demo-data) -> train AnoViT-edge at 224 px on train/good
#   -> export models/demo-f32 (ONNX parity check + threshold) -> quantize models/demo-int8
#   -> evaluate both on the 220 test images (docs/demo_model_eval_{f32,int8}.json).
# Usage: scripts/make_demo_model.sh          (from anywhere; PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=out/demo-data
CKPT=out/demo-edge.pt

# Recipe of the bundled model; docs/MODEL.md says why each value.
EPOCHS=${EPOCHS:-60}
MASK_RATIO=${MASK_RATIO:-0.0}
SIGMA=${SIGMA:-4}

cargo run --release -- synth --out "$DATA"
"$PY" scripts/train.py --data "$DATA" --layout mvtec --size edge --image-size 224 --epochs "$EPOCHS" \
    --batch 8 --seed 0 --val-fraction 0.1 --patience 12 --mask-ratio "$MASK_RATIO" --out "$CKPT"
"$PY" scripts/export.py --ckpt "$CKPT" --out models/demo-f32 --name demo-edge-f32 \
    --sigma "$SIGMA" --truncate 4 --target-false-reject 0.01 --margin 1.0
"$PY" scripts/quantize.py --bundle models/demo-f32 --out models/demo-int8 --data "$DATA" --name demo-edge-int8
for b in f32 int8; do
    "$PY" scripts/evaluate.py --bundle "models/demo-$b" --data "$DATA" --sigmas 0 2 8 \
        --out "docs/demo_model_eval_$b.json"
done
