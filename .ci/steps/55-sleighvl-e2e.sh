#!/usr/bin/env bash
# SleighVL baseline -> train -> evaluate, end to end on a tiny checkpoint, through each host
# framework's recipe: recipes/internvl2-2b/e2e.py reads the "Baseline, training and evaluation"
# block of the recipe README and runs its commands (convert a tiny released-layout InternVL2,
# build the data, lmms-eval on tiny local MME / RealWorldQA / OCRBench at 6 and 24 tiles, train,
# evaluate the trained run, paper_metrics.py with the deltas), changing only what a CPU needs (each
# change is printed beside its command). Uses the environments of the earlier steps: the main one
# (train + convert extras, step 20), .venv-lmms-engine (step 30), .venv-llava (step 31),
# .venv-lmms-eval (step 50). The llava sequence (recipes/llava-next/llava) trains a tiny LLaVA-1.6
# in llava's layout with llava-torch and hands it to lmms-eval through `gswa convert-llava`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_NUM_THREADS=1
start=$(date +%s)
EVAL_PY="${LMMS_EVAL_VENV:-.venv-lmms-eval}/bin/python"
ENGINE_PY="${LMMS_ENGINE_VENV:-.venv-lmms-engine}/bin/python"
LLAVA_PY="${LLAVA_VENV:-.venv-llava}/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for framework in transformers lmms-engine llava; do
  echo "=== SleighVL e2e: $framework"
  python recipes/internvl2-2b/e2e.py "$framework" --work "$tmp/$framework" --eval-python "$EVAL_PY" \
    --engine-python "$ENGINE_PY" --llava-python "$LLAVA_PY" | tee "$tmp/$framework.log"
  # the deltas table: (published,) baseline, trained, delta (, the paper's delta): the llava recipe's
  # LLaVA-NeXT has no published number, so its table has no published/paper columns
  grep -E "^metric +(published +)?baseline +trained +delta" "$tmp/$framework.log"
  test "$(grep -cE '^(mme|realworldqa|ocrbench) ' "$tmp/$framework.log")" -eq 6
  # the evaluated run is the trained one: host weights moved from the baseline, GSWA saved beside them
  grep -E "^trained model .* host tensors moved from the baseline" "$tmp/$framework.log"
done
# the parquet export (needs pyarrow/datasets, which the lmms-eval environment has) and the rest of the file
"$EVAL_PY" -m pytest -q -p no:cacheprovider tests/test_recipes_e2e.py
echo "55-sleighvl-e2e took $(( $(date +%s) - start )) s"
