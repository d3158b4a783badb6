#!/usr/bin/env bash
# Regenerates the bundled demo model end to end:
#   synthetic conveyor data (out/demo-data)
#   -> train AnoViT-edge at 224 px on train/good, in two stages (docs/MODEL.md says why):
#        1. plain reconstruction, 40 epochs;  2. 10 epochs with 10 % of each input corrupted, cosine lr;
#        3. 8 more such epochs on 1500 fresh images (seed 11): more poses cover the range's extremes
#   -> export models/demo-f32 (ONNX parity check, threshold from held-out good images)
#   -> quantize models/demo-int8
#   -> `anovit calibrate` both on 1000 unseen good parts (seed 99): 1 % false rejects at 95 % confidence
#   -> evaluate both on the 220 test images of seed 7 (docs/demo_model_eval_{f32,int8}.json).
# Deterministic (fixed seeds, deterministic torch algorithms, fixed epoch counts, 2 threads);
# about 30 minutes of training on 2 uncontended cores, much longer if other work shares them.
# Usage: scripts/make_demo_model.sh          (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=out/demo-data
MORE=out/demo-data-more
GOOD=out/calib-goods
COMMON=(--data "$DATA" --layout mvtec --recipe reconstruction --size edge --image-size 224 --batch 8 --seed 0 --val-fraction 0.2
        --patience 12 --threads 2)

cargo build --release
ANOVIT=target/release/anovit
"$ANOVIT" synth --out "$DATA" --train 500
"$ANOVIT" synth --out "$MORE" --seed 11 --train 1500
"$ANOVIT" synth --out "$GOOD" --seed 99 --train 1000 --test-good 0 --test-per-defect 0
"$PY" scripts/train.py "${COMMON[@]}" --epochs 40 --out out/demo-edge-stage1.pt
"$PY" scripts/train.py "${COMMON[@]}" --epochs 10 --init out/demo-edge-stage1.pt --corrupt-ratio 0.1 --cosine \
    --out out/demo-edge.pt
"$PY" scripts/train.py "${COMMON[@]/$DATA/$MORE}" --epochs 8 --init out/demo-edge.pt --corrupt-ratio 0.1 --cosine \
    --out out/demo-edge-stage3.pt
"$PY" scripts/export.py --ckpt out/demo-edge-stage3.pt --out models/demo-f32 --name demo-edge-f32 \
    --sigma 4 --truncate 4 --target-false-reject 0.01 --margin 1.0
"$PY" scripts/quantize.py --bundle models/demo-f32 --out models/demo-int8 --data "$MORE" --name demo-edge-int8
for b in f32 int8; do
    "$ANOVIT" calibrate --model "models/demo-$b" --good "$GOOD/train/good"
done
for b in f32 int8; do
    "$PY" scripts/evaluate.py --bundle "models/demo-$b" --data "$DATA" --sigmas 0 2 8 \
        --out "docs/demo_model_eval_$b.json"
done
