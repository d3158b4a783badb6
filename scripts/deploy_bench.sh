#!/usr/bin/env bash
# Deploy builds side by side: stripped size, plan load to first result, loop latency.
#   scripts/deploy_bench.sh [PARTS] [ROUNDS]    (defaults 60 parts, 3 rounds)
# Builds the deploy binary (no ONNX front-end, `--no-default-features`) with the two deploy
# profiles of Cargo.toml, compiles the demo model into a plan with the full build, then runs each
# deploy binary on that plan in alternating rounds (same parts, single-threaded tract) and prints
# the median of the per-round p50 latencies and the wall time of a one-part run (process start,
# plan load, first result). Measured together so the ratio holds on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=${1:-60}
ROUNDS=${2:-3}
OUT=target/deploy-bench
mkdir -p "$OUT"

cargo build --release --quiet
rm -rf "$OUT/plan"
target/release/anovit compile --model models/demo-f32 --out "$OUT/plan" | tail -1

declare -A BIN
for profile in release-lto deploy-small; do
    cargo build --quiet --profile "$profile" --no-default-features --target-dir target/deploy
    BIN[$profile]=target/deploy/$profile/anovit
done

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
for profile in release-lto deploy-small; do : >"$OUT/$profile.p50"; : >"$OUT/$profile.first"; done
for round in $(seq "$ROUNDS"); do
    for profile in release-lto deploy-small; do
        bin=${BIN[$profile]}
        "$bin" run --model "$OUT/plan" --parts "$PARTS" -q 2>/dev/null |
            sed -n 's/.*latency p50 \([0-9.]*\) ms.*/\1/p' >>"$OUT/$profile.p50"
        start=$(date +%s.%N)
        "$bin" run --model "$OUT/plan" --parts 1 -q >/dev/null 2>&1
        echo "$(date +%s.%N) - $start" | bc >>"$OUT/$profile.first"
    done
done

echo "| deploy profile | stripped binary | loop p50 (median of $ROUNDS rounds of $PARTS parts) | one-part run, wall (median) |"
echo "|---|---|---|---|"
for profile in release-lto deploy-small; do
    size=$(stat -c %s "${BIN[$profile]}")
    printf '| `%s` | %.1f MB | %s ms | %.0f ms |\n' "$profile" "$(echo "$size / 1000000" | bc -l)" \
        "$(median <"$OUT/$profile.p50")" "$(echo "$(median <"$OUT/$profile.first") * 1000" | bc -l)"
done
echo "($(uname -m), $(nproc) cores, $(date -u +%Y-%m-%d))"
