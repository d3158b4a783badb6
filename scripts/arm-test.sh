#!/usr/bin/env bash
# The ARM stage: cross-builds `anovit` for aarch64 (Raspberry Pi 4/5, Jetson; the default) or
# armv7 (32-bit Raspberry Pi OS) with Debian's cross tools and Rust standard library (no Docker,
# no rustup download), and runs it under qemu-user, tract's NEON kernels included: `anovit
# golden` recomputes the golden scores (onnxruntime on x86) within 1e-4 relative, and the whole
# loop on synthetic parts must give the x86 build's verdicts and scores.
#
#   scripts/arm-test.sh [aarch64|armv7]      (root, or the packages below already installed)
#
# The build goes to target/<arch> (10 to 20 minutes the first time on 2 cores, then cached).
# Runs through the binary, not libtest: the libtest golden binary spins under qemu-aarch64
# before its test body makes a system call (seen with -strace), while the same build's `anovit`
# runs (about 8 s a part under emulation).
#
# Part of the test command for aarch64 (scripts/test.sh; ANOVIT_SKIP_ARM=1 skips it). Each
# check prints an `arm-check: ok|FAIL` line that the test command counts.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-aarch64}
case $arch in
aarch64) deb=arm64 triple=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu qemu=qemu-aarch64 ;;
armv7) deb=armhf triple=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf qemu=qemu-arm ;;
*)
    echo "usage: scripts/arm-test.sh [aarch64|armv7]" >&2
    exit 2
    ;;
esac

. scripts/debs.sh
# The cross packages come from Debian's mirrors, which are now and then mid-sync (one
# architecture's index behind the other's): then this stage says loudly that it did not run,
# rather than failing the product's tests for the mirror.
if ! (need_debs arm --arch $deb gcc-$gnu libc6-dev-$deb-cross qemu-user rustc-web cargo-web libstd-rust-web-dev:$deb); then
    echo "arm-check: SKIPPED: the $arch cross packages could not be installed (see above); $arch was not checked"
    exit 0
fi

# Debian's compiler, whose standard library for the target comes from libstd-rust-web-dev
# (rustup's rustc would come first in PATH and has no ARM std here), for the cross build only:
# the x86 reference below is the usual toolchain's build, which the tests already made. Linker,
# C compiler for tract's NEON assembly and the qemu runner are in .cargo/config.toml.
echo "== arm: building anovit for $triple ($(/usr/bin/rustc --version))"
RUSTC=/usr/bin/rustc timeout 3000 /usr/bin/cargo build --release --target $triple --target-dir target/$arch --bin anovit
bin=target/$arch/$triple/release/anovit
run_arm() { timeout 1200 $qemu -L /usr/$gnu "$bin" "$@"; }
data=()
[ -d ../shared/data ] && data=(--data ../shared/data)
check() { if [ "$1" = 0 ]; then echo "arm-check: ok   $2"; else echo "arm-check: FAIL $2"; fails=1; fi; }
fails=0
echo "== arm: golden scores under $qemu"
rc=0
run_arm golden "${data[@]}" > /tmp/anovit-arm.log 2>&1 || rc=$?
cat /tmp/anovit-arm.log
check $rc "$arch golden scores: $(grep '^golden:' /tmp/anovit-arm.log || echo 'anovit golden failed')"
# The same 6 synthetic parts through the loop here and under qemu; same verdicts, scores within TOL.
same_loop() { # NAME TOL [anovit run arguments...]
    local name=$1 tol=$2 rc=0
    shift 2
    target/release/anovit run --board "$board" --parts 6 --events /tmp/anovit-x86.jsonl -q "$@" > /dev/null 2>&1
    run_arm run --board "$board" --parts 6 --events /tmp/anovit-arm.jsonl -q "$@" > /dev/null 2>&1 || rc=$?
    check $rc "$arch anovit run $name under $qemu (exit $rc)"
    rc=0
    python3 - /tmp/anovit-x86.jsonl /tmp/anovit-arm.jsonl "$tol" > /tmp/anovit-arm-loop.log 2>&1 <<'PY' || rc=$?
import json, sys
x86, arm = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
tol = float(sys.argv[3])
assert len(x86) == len(arm) == 6, (len(x86), len(arm))
worst = 0.0
for a, b in zip(x86, arm):
    assert a["verdict"] == b["verdict"], (a, b)
    worst = max(worst, abs(a["score"] - b["score"]) / abs(a["score"]))
print(f"6 parts, same verdicts as x86, largest relative score difference {worst:.2e} (tolerance {tol:g})")
assert worst < tol, worst
PY
    cat /tmp/anovit-arm-loop.log
    check $rc "$arch loop, $name: $(tail -1 /tmp/anovit-arm-loop.log)"
}
# Emulation is slow: a deadline that cannot turn its time into faults.
board=$(mktemp --suffix=.toml)
sed 's/^result_deadline_ms = .*/result_deadline_ms = 60000/' board/host-demo.toml > "$board"
cargo build --release --quiet --bin anovit
echo "== arm: the loop on the same synthetic parts, $arch against x86"
same_loop "f32 ONNX bundle" 1e-4
# The int8 plan: tract's integer products (NEON kernels here, AVX-512 VNNI on the host) and
# anovit's quantiser. An int8 network turns the f32 parts' last-bit differences into whole
# quantisation steps on a few values, so its scores are held to 2 %, not to 1e-4.
echo "== arm: the int8 plan on the same parts, $arch against x86"
plan8=$(mktemp -d)
target/release/anovit compile --int8 --model models/demo-int8 --out "$plan8/plan" > /dev/null
same_loop "int8 plan" 0.02 --model "$plan8/plan"
rm -rf "$plan8"
rm -f "$board"
exit $fails
