#!/usr/bin/env bash
# The ARM stage: cross-builds `anovit` for aarch64 (Raspberry Pi 4/5, Jetson) with Debian's
# cross tools and Rust standard library (no Docker, no rustup download), and runs it under
# qemu-aarch64, tract's NEON kernels included: `anovit golden` recomputes the golden scores
# (onnxruntime on x86) within 1e-4 relative, and the whole loop on synthetic parts must give
# the x86 build's verdicts and scores.
#
#   scripts/arm-test.sh        (root, or the packages below already installed)
#
# The build goes to target/aarch64 (about 10 minutes the first time on 2 idle cores, then
# cached). Runs through the binary, not libtest: the libtest golden binary spins under
# qemu-aarch64 before its test body makes a system call (seen with -strace), while the same
# build's `anovit` runs (about 8 s a part under emulation).
#
# Status: not part of the test command yet (its CI cost is to be measured; issue 9).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/debs.sh
need_debs arm --arch arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user rustc-web cargo-web libstd-rust-web-dev:arm64

# Debian's compiler, whose standard library for aarch64 comes from libstd-rust-web-dev:arm64
# (rustup's rustc would come first in PATH and has no aarch64 std here). Linker, C compiler for
# tract's NEON assembly and the qemu runner are in .cargo/config.toml.
export RUSTC=/usr/bin/rustc
cargo_arm() {
    local sub=$1
    shift
    timeout 3000 /usr/bin/cargo "$sub" --release --target aarch64-unknown-linux-gnu --target-dir target/aarch64 "$@"
}
echo "== arm: building anovit for aarch64 ($($RUSTC --version))"
cargo_arm build --bin anovit
arm=target/aarch64/aarch64-unknown-linux-gnu/release/anovit
run_arm() { timeout 1200 qemu-aarch64 -L /usr/aarch64-linux-gnu "$arm" "$@"; }
data=()
[ -d ../shared/data ] && data=(--data ../shared/data)
echo "== arm: golden scores under qemu-aarch64"
run_arm golden "${data[@]}" | tee /tmp/anovit-arm.log
echo "== arm: the loop on the same synthetic parts, aarch64 against x86"
# Emulation is slow: a deadline that cannot turn its time into faults.
board=$(mktemp --suffix=.toml)
sed 's/^result_deadline_ms = .*/result_deadline_ms = 60000/' board/host-demo.toml > "$board"
cargo build --release --quiet --bin anovit
target/release/anovit run --board "$board" --parts 6 --events /tmp/anovit-x86.jsonl -q > /dev/null 2>&1
run_arm run --board "$board" --parts 6 --events /tmp/anovit-arm.jsonl -q > /dev/null 2>&1
python3 - /tmp/anovit-x86.jsonl /tmp/anovit-arm.jsonl <<'PY'
import json, sys
x86, arm = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert len(x86) == len(arm) == 6, (len(x86), len(arm))
worst = 0.0
for a, b in zip(x86, arm):
    assert a["verdict"] == b["verdict"], (a, b)
    worst = max(worst, abs(a["score"] - b["score"]) / abs(a["score"]))
print(f"arm: 6 parts, same verdicts as x86, largest relative score difference {worst:.2e}")
assert worst < 1e-4, worst
PY
rm -f "$board"
