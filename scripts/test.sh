#!/usr/bin/env bash
# The test command (README): sets up what the tests need, then runs every suite.
#   Rust: unit tests, the whole loop with fakes, golden scores against onnxruntime, the
#         allocation test, the binary's error handling, publishing to a real Mosquitto broker,
#         the set-up page in headless Chromium (cargo test; root the first time, for Debian's
#         mosquitto and chromium packages).
#   Python: preprocessing/scoring contract, model, a short real train -> export -> quantize run.
#   VM: the real binary against real kernel drivers (vivid camera, gpio-sim lines) in qemu
#       (scripts/vm-test.sh; needs root for its Debian packages the first time;
#       ANOVIT_SKIP_VM=1 skips it, loudly).
#   ARM: the binary cross-built for aarch64 with Debian's tools, run under qemu-aarch64 against
#        the golden scores and the x86 build's loop (scripts/arm-test.sh; root the first time;
#        ANOVIT_SKIP_ARM=1 skips it, loudly).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import torch, onnxruntime, onnx, sklearn" 2>/dev/null; then
    echo "== setting up .venv from scripts/requirements.txt (torch is large: a few minutes)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --no-cache-dir --upgrade pip
    # No wheel cache: torch and its CUDA wheels would take another ~4 GB of disk.
    .venv/bin/pip install --quiet --no-cache-dir -r scripts/requirements.txt
fi

# The MQTT tests run against a real Mosquitto broker on loopback, the set-up page's in Chromium.
. scripts/debs.sh
need_debs fleet mosquitto mosquitto-clients chromium

echo "== cargo test (release: tract is slow unoptimised)"
cargo test --release 2>&1 | tee /tmp/anovit-cargo-test.log
echo "== Rust summary"
grep -E "^test result:" /tmp/anovit-cargo-test.log | awk '{p+=$4; f+=$6; i+=$8} END {printf "rust: %d passed, %d failed, %d ignored\n", p, f, i}'

echo "== pytest scripts/tests"
.venv/bin/python -m pytest -q scripts/tests

echo "== VM stage: real V4L2 and GPIO drivers (scripts/vm-test.sh)"
if [ "${ANOVIT_SKIP_VM:-0}" = 1 ]; then
    echo "vm: SKIPPED (ANOVIT_SKIP_VM=1): the camera and GPIO paths were not tested against real drivers"
else
    scripts/vm-test.sh 2>&1 | tee /tmp/anovit-vm.log
    grep -E "^vm-check: (ok|FAIL)" /tmp/anovit-vm.log | awk '{n[$2]++} END {printf "vm: %d passed, %d failed\n", n["ok"], n["FAIL"]}'
fi

echo "== ARM stage: aarch64 build under qemu (scripts/arm-test.sh)"
if [ "${ANOVIT_SKIP_ARM:-0}" = 1 ]; then
    echo "arm: SKIPPED (ANOVIT_SKIP_ARM=1): the aarch64 build was not checked"
else
    scripts/arm-test.sh 2>&1 | tee /tmp/anovit-arm-stage.log
    grep -E "^arm-check: (ok|FAIL|SKIPPED)" /tmp/anovit-arm-stage.log |
        awk '{n[$2]++} END {printf "arm: %d passed, %d failed%s\n", n["ok"], n["FAIL"], n["SKIPPED:"] ? ", SKIPPED (packages unavailable)" : ""}'
fi
