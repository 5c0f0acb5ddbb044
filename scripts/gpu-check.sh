#!/usr/bin/env bash
# On a machine with CUDA: the CUDA tests, the GPU benchmarks and a short recorded pair, in one
# table (printed and written to gpu-check.txt). Without CUDA it says so and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_check.py "$@"
