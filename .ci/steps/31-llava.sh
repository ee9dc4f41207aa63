#!/usr/bin/env bash
# llava integration: the llava package (PyPI llava-torch 1.2.2.post1, LLaVA-1.5/1.6 code) in its
# own virtual environment. llava-torch pins torch 2.0.1 / transformers 4.36.2, so it is installed
# with --no-deps next to gswa-plugin's torch 2.13.0 (CPU) and transformers 5.x; llava's model code
# needs nothing beyond them, its training code also accelerate (the `llava` extra).
# The `llava`-marked tests and the contract tests of the llava_torch adapter run on the newest
# transformers pip picks and again on 5.8.1 (the lower end of what the lmms-engine extra admits).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)
VENV="${LLAVA_VENV:-.venv-llava}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
# torch exactly 2.13.0 (the local CPU wheel): any other spec pulls a multi-GB CUDA build.
"$VENV/bin/pip" install -q torch==2.13.0 -e ".[llava,test]"
"$VENV/bin/pip" install -q --no-deps llava-torch==1.2.2.post1
echo "llava step: environment ready after $(( $(date +%s) - start )) s"
run_tests() {
  "$VENV/bin/python" -c "import torch, transformers, llava; print('llava step: torch', torch.__version__, 'transformers', transformers.__version__)"
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m llava tests/test_llava.py tests/test_llava_convert.py
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_llava_integration.py
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_contract.py \
    -k "llava_torch or test_every_case_names_a_registered_adapter or test_every_adapter_has_a_row_in_the_docs"
}
run_tests
"$VENV/bin/pip" install -q "transformers==5.8.1"
run_tests
echo "llava step took $(( $(date +%s) - start )) s"
