#!/usr/bin/env bash
# lmms-eval integration: lmms-eval 0.7.3 in its own virtual environment with its real
# dependencies (it needs torchvision, hence the torch 2.14.1 / torchvision 0.29.1 pair: a
# ~6-7 GB venv), the plugin installed into it, then the `lmms_eval`-marked tests: lmms-eval
# discovers the gswa models through its entry-point group and runs mme, ocrbench and
# realworldqa offline on tiny models with tiny local copies of those datasets.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)
VENV="${LMMS_EVAL_VENV:-.venv-lmms-eval}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$constraints"
"$VENV/bin/pip" install -q --upgrade pip
# torch/torchvision as an exact pair first: an unpinned torchvision would pull another torch.
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install -q -c "$constraints" -e ".[eval,test]"
echo "lmms-eval step: environment ready after $(( $(date +%s) - start )) s"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m lmms_eval tests/test_lmms_eval.py tests/test_question_aware_lmms.py
echo "lmms-eval step took $(( $(date +%s) - start )) s"
