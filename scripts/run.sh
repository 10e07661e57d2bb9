#!/usr/bin/env bash
# Build qvl and run it: `scripts/run.sh [qvl run options]`. With no -m, qvl uses
# Qwen/Qwen3-VL-2B-Instruct from the Hugging Face cache, or else a random-weight demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
exec ./build/qvl run "$@"
