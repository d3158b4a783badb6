#!/usr/bin/env bash
# int8 against f32 in tract, by encoder width: how much the integer plan (src/quant.rs, src/deconv.rs) gains on
# the edge model (ViT-Ti width, 192) and on the paper's ViT-B/16 (768), single thread.
#   scripts/int8_width.sh [SIZES]     (default "edge paper"; about 10 minutes on 2 cores)
#   INT8_KERNEL=wide scripts/int8_width.sh   (`anovit --int8-kernel`; default auto: tract's choice)
# Each size goes through the real pipeline on a small synthetic set: one epoch of training (the
# speed of a plan does not depend on how well it is trained), export, onnxruntime's static int8
# quantisation (scripts/quantize.py), `anovit compile` of both, then `anovit bench` times every
# plan in interleaved rounds and the f32/int8 ratio is printed per size.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${1:-"edge paper"}
PY=${PY:-.venv/bin/python}
OUT=target/int8-width
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/anovit
[ -d "$OUT/data/train" ] || "$BIN" synth --out "$OUT/data" --seed 5 --train 40 --test-good 4 --test-per-defect 1 >/dev/null

models=()
for size in $SIZES; do
    # Trained, exported and quantised once; compiled every time (plans follow the runtime's code).
    if [ ! -f "$OUT/$size-int8/manifest.json" ]; then
        "$PY" scripts/train.py --data "$OUT/data" --recipe reconstruction --size "$size" --epochs 1 --batch 8 --patience 1 \
            --out "$OUT/$size.pt" >"$OUT/$size.log" 2>&1
        "$PY" scripts/export.py --ckpt "$OUT/$size.pt" --out "$OUT/$size-f32" --parity-images 1 >>"$OUT/$size.log" 2>&1
        "$PY" scripts/quantize.py --bundle "$OUT/$size-f32" --out "$OUT/$size-int8" --data "$OUT/data" \
            --calibration-images 16 --test-per-kind 1 >>"$OUT/$size.log" 2>&1
    fi
    rm -rf "$OUT/$size-f32-plan" "$OUT/$size-int8-plan"
    "$BIN" compile --model "$OUT/$size-f32" --out "$OUT/$size-f32-plan" | tee -a "$OUT/$size.log"
    "$BIN" compile --int8 --model "$OUT/$size-int8" --out "$OUT/$size-int8-plan" | tee -a "$OUT/$size.log"
    models+=(--model "$OUT/$size-f32-plan" --model "$OUT/$size-int8-plan")
done

"$BIN" --int8-kernel "${INT8_KERNEL:-auto}" bench --threads 1 --frames 0 --rss-parts 0 --profile 0 --runs 3 --rounds 6 --json "$OUT/bench.json" \
    "${models[@]}" >/dev/null 2>&1
"$PY" - "$OUT/bench.json" $SIZES <<'EOF'
import json, os, sys
bench, sizes = json.load(open(sys.argv[1])), sys.argv[2:]
plans = {p["model"]: p["latency"] for p in bench["plan"]}
print("| encoder | f32 plan, median | int8 plan, median | int8 speed-up |")
print("|---|---|---|---|")
for s in sizes:
    f, i = plans[f"{s}-f32-plan"]["median_ms"], plans[f"{s}-int8-plan"]["median_ms"]
    print(f"| `{s}` | {f:.1f} ms | {i:.1f} ms | **{f / i:.2f}x** |")
m = bench["machine"]
kernel = os.environ.get("INT8_KERNEL", "auto")
print(f"({m['cpu']}, {m['arch']}, 1 thread, tract {m['tract']}, int8 kernel {kernel}; `scripts/int8_width.sh`)")
EOF
