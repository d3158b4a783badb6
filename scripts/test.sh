#!/usr/bin/env bash
# The test command (README): sets up what the tests need, then runs every suite.
#   Rust: unit tests, the whole loop with fakes, golden scores against onnxruntime, the
#         allocation test and the binary's error handling (cargo test).
#   Python: preprocessing/scoring contract, model, a short real train -> export -> quantize run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import torch, onnxruntime, onnx, sklearn" 2>/dev/null; then
    echo "== setting up .venv from scripts/requirements.txt (torch is large: a few minutes)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -r scripts/requirements.txt
fi

echo "== cargo test (release: tract is slow unoptimised)"
cargo test --release 2>&1 | tee /tmp/anovit-cargo-test.log
echo "== Rust summary"
grep -E "^test result:" /tmp/anovit-cargo-test.log | awk '{p+=$4; f+=$6; i+=$8} END {printf "rust: %d passed, %d failed, %d ignored\n", p, f, i}'

echo "== pytest scripts/tests"
.venv/bin/python -m pytest -q scripts/tests
