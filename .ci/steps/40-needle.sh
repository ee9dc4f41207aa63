#!/usr/bin/env bash
# The needle-tile benchmark at CI size: trains the benchmark's best configuration (gswa_plugin.needle.BEST)
# on CPU and asserts its hit rate on held-out images (tests/test_needle.py, marked slow + needle).
# Runs in the main venv; the full comparison is benchmarks/needle/run.py (see docs/needle.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q torch==2.13.0 -e ".[test]"
python -m pytest -q -s -m needle tests/test_needle.py
echo "40-needle: ok"
