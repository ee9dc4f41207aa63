"""Train GSWA from Python with a recipe, then use the result (runs on CPU in seconds).

The tiny setup (a real InternVL model with random weights, real photographs) stands in for
InternVL2-2B and the SleighVL mix; with a real recipe only the path changes.
"""

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

import gswa_plugin
from gswa_plugin.integrations.transformers import from_pretrained_with_gswa, load_recipe, train
from gswa_plugin.integrations.transformers.smoke import write_setup

root = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
recipe = write_setup(root)  # model/, data/, recipe.yaml

# 1. a recipe plus command-line style overrides, validated all at once
cfg = load_recipe(recipe, ["training_args.max_steps=2", "training_args.save_steps=2", "freeze=gswa"])

# 2. train: checkpoints in output_dir/checkpoint-N hold gswa.* keys and a gswa/ folder
trainer = train(cfg)
out = Path(cfg.training_args["output_dir"])
print("logged:", {k: round(v, 4) for k, v in trainer.state.log_history[-2].items() if k.startswith("gswa/")})

# 3. load the trained model back: the host from the checkpoint, GSWA enabled and loaded strictly
model = from_pretrained_with_gswa(out, dtype=torch.float32)

# 4. or only the GSWA weights (out/gswa, written by gswa_plugin.save) into a fresh host
fresh = AutoModelForImageTextToText.from_pretrained(cfg.model.name_or_path, dtype=torch.float32)
gswa_plugin.load(fresh, out / "gswa")
print("gswa weights:", sorted((out / "gswa").iterdir()))
