#!/usr/bin/env bash
# GSWA on one GPU, in one go (issue 16): identity at init, cost ratios per mode, 20 training
# steps at full InternVL2-2B shapes, torch.compile. Random weights, no download.
#
#   bash benchmarks/gpu/run.sh                      # on a CUDA machine (sized for < 8 minutes)
#   bash benchmarks/gpu/run.sh --device cpu --smoke # tiny shapes, seconds (run by the test suite)
#
# Writes gpu_results.json and gpu_results.md into --out (default: benchmarks/gpu/results/).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python -m benchmarks.gpu.run "$@"
