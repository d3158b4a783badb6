#!/usr/bin/env bash
# Deploy builds side by side: stripped size, plan load to first result, loop latency.
#   scripts/deploy_bench.sh [PARTS] [ROUNDS]    (defaults 60 parts, 3 rounds)
#   SYMS=1 scripts/deploy_bench.sh              also sums the x86 binary's functions by crate (unstripped build)
#   ARM=1 scripts/deploy_bench.sh               also cross-builds the aarch64 deploy binary (the
#                                               toolchain of scripts/arm-test.sh) and prints its size
# Builds the deploy binary (no ONNX front-end, `--no-default-features`) with the two deploy
# profiles of Cargo.toml, compiles the demo model into an f32 and an int8 plan with the full build,
# then runs each deploy binary on each plan in alternating rounds (same parts, single-threaded
# tract) and prints the median of the per-round p50 latencies and the wall time of a one-part run
# (process start, plan load, first result). Measured together so the ratios hold on a shared
# machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=${1:-60}
ROUNDS=${2:-3}
OUT=target/deploy-bench
mkdir -p "$OUT"

cargo build --release --quiet
for p in f32 int8; do
    rm -rf "$OUT/plan-$p"
    target/release/anovit compile --model "models/demo-$p" --out "$OUT/plan-$p" | tail -1
done

declare -A BIN
for profile in release-lto deploy-small; do
    cargo build --quiet --profile "$profile" --no-default-features --target-dir target/deploy
    BIN[$profile]=target/deploy/$profile/anovit
done

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
for profile in release-lto deploy-small; do
    for p in f32 int8; do : >"$OUT/$profile.$p.p50"; done
    : >"$OUT/$profile.first"
done
for round in $(seq "$ROUNDS"); do
    for profile in release-lto deploy-small; do
        bin=${BIN[$profile]}
        for p in f32 int8; do
            "$bin" run --model "$OUT/plan-$p" --parts "$PARTS" -q 2>/dev/null |
                sed -n 's/.*latency p50 \([0-9.]*\) ms.*/\1/p' >>"$OUT/$profile.$p.p50"
        done
        start=$(date +%s.%N)
        "$bin" run --model "$OUT/plan-f32" --parts 1 -q >/dev/null 2>&1
        echo "$(date +%s.%N) - $start" | bc >>"$OUT/$profile.first"
    done
done

echo "| deploy profile | stripped binary | loop p50, f32 plan | loop p50, int8 plan | one-part run, wall (f32) |"
echo "|---|---|---|---|---|"
for profile in release-lto deploy-small; do
    size=$(stat -c %s "${BIN[$profile]}")
    printf '| `%s` | %.1f MB | %s ms | %s ms | %.0f ms |\n' "$profile" "$(echo "$size / 1000000" | bc -l)" \
        "$(median <"$OUT/$profile.f32.p50")" "$(median <"$OUT/$profile.int8.p50")" \
        "$(echo "$(median <"$OUT/$profile.first") * 1000" | bc -l)"
done
echo "($(uname -m), $(nproc) cores, $(date -u +%Y-%m-%d); loop p50: median of $ROUNDS rounds of $PARTS parts)"

if [ "${ARM:-0}" = 1 ]; then
    # Debian's rustc and aarch64 std, as in scripts/arm-test.sh (root installs them there).
    RUSTC=/usr/bin/rustc /usr/bin/cargo build --quiet --profile release-lto --no-default-features \
        --target aarch64-unknown-linux-gnu --target-dir target/aarch64 --bin anovit
    size=$(stat -c %s target/aarch64/aarch64-unknown-linux-gnu/release-lto/anovit)
    printf 'aarch64 `release-lto` deploy binary: %.1f MB stripped\n' "$(echo "$size / 1000000" | bc -l)"
fi

if [ "${SYMS:-0}" = 1 ]; then
    # What the x86 release-lto deploy binary's code is made of: the same build unstripped, its
    # function symbols summed by the crate that defines them.
    cargo build --quiet --profile release-lto --no-default-features --target-dir target/deploy-syms \
        --config 'profile.release-lto.strip=false'
    nm -S --size-sort -C target/deploy-syms/release-lto/anovit | python3 -c '
import collections, re, sys
by = collections.Counter()
for line in sys.stdin:
    f = line.rstrip("\n").split(" ", 3)
    if len(f) == 4 and f[2] in "tTwW":
        m = re.search(r"([a-z_][a-z0-9_]*)::", f[3])
        by[m.group(1) if m else "(other)"] += int(f[1], 16)
print(f"functions of the release-lto deploy binary: {sum(by.values()) / 1e6:.2f} MB")
for k, v in by.most_common(10):
    print(f"  {k:15s} {v / 1e6:5.2f} MB")'
fi
