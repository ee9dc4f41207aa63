#!/usr/bin/env bash
# The CI-sized needle-tile benchmark run (tests/test_needle.py, marked needle; about 15 s on 2 idle
# cores): trains the benchmark's best configuration and asserts its hit rate on held-out images.
# Kept out of the default `pytest -q` run; runs in the main venv that .ci/run created and activated.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pytest -q -m needle tests/test_needle.py
echo "15-needle: ok"
