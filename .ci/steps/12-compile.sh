#!/usr/bin/env bash
# The compatibility matrix's torch.compile cells beyond the one mode per adapter that the default
# run compiles (tests/test_compat.py, marked compile_matrix; about 3 min on 2 idle cores): every
# adapter x mode, compiled with the aot_eager backend, must match eager.
# Runs in the main venv that .ci/run created and activated.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pytest -q -m compile_matrix tests/test_compat.py
echo "12-compile: ok"
