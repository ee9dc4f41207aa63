#!/usr/bin/env bash
# Training integration under accelerate: two CPU ranks on gloo train the tiny recipe, write a
# checkpoint, resume from it and extract GSWA (tests/test_training_multiprocess.py, marked slow),
# then the CLI entry points on the same setup. Runs in the main venv with the `train` extra.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# two spin-waiting OpenMP threads per process make tiny CPU steps 10-100x slower on a busy machine
export OMP_NUM_THREADS=1
pip install -q torch==2.13.0 -e ".[train,convert,test]"
python -m pytest -q -m slow tests/test_training_multiprocess.py
python -m pytest -q tests/test_convert_internvl2.py -k sentencepiece  # needs the convert extra
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m gswa_plugin.integrations.transformers.smoke "$tmp/setup"
gswa train "$tmp/setup/recipe.yaml" --check
gswa train "$tmp/setup/recipe.yaml" training_args.max_steps=2 training_args.save_steps=2
test -f "$tmp/setup/out/gswa/gswa.safetensors"
gswa train "$tmp/setup/recipe.yaml" training_args.max_steps=3 training_args.save_steps=3 --resume latest
test -d "$tmp/setup/out/checkpoint-3"
# each recipe's preflight with its machine-specific keys pointed at the tiny setup (this machine has no
# InternVL2-2B, no SleighVL data and no bf16 GPU: unchanged, the preflight lists exactly those)
for f in recipes/internvl2-2b/transformers/*.yaml; do
  gswa train "$f" --check model.name_or_path="$tmp/setup/model" "data.train_files=[$tmp/setup/data/train_llava.jsonl]" \
    data.image_root= training_args.bf16=false training_args.use_cpu=true training_args.report_to=none \
    training_args.output_dir="$tmp/check-out"
done
echo "20-train: ok"
