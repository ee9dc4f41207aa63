"""The recipe under `accelerate launch --cpu --num_processes 2` (two ranks on gloo), end to end.

Marked slow (two launches of two processes each, about a minute or more on 2 cores); run by
the CI step .ci/steps/20-train.sh with `pytest -m slow tests/test_training_multiprocess.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import gswa_plugin
from gswa_plugin.hf import load_processor
from gswa_plugin.integrations.transformers import from_pretrained_with_gswa, read_gswa_state, smoke
from gswa_plugin.integrations.transformers.data import ConversationCollator, ConversationDataset
from gswa_plugin.integrations.transformers.trainer import model_class_for

pytestmark = pytest.mark.slow


def _launch(recipe, *extra):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "gswa_plugin.cli", "train", str(recipe), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_two_ranks_train_checkpoint_resume_extract(tmp_path):
    recipe = smoke.write_setup(tmp_path)
    data = yaml.safe_load(recipe.read_text())
    out = tmp_path / "out"
    # 2 ranks x 2 records = the whole 4-record set in every step
    _launch(recipe, "training_args.max_steps=4", "training_args.save_steps=2",
            "training_args.per_device_train_batch_size=2")
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4]
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert logged[0]["gswa/max_min_ratio"] == pytest.approx(1.0)
    assert logged[-1]["gswa/max_min_ratio"] > 1.01
    ckpt = out / "checkpoint-2"
    assert read_gswa_state(ckpt) and (ckpt / "gswa" / "gswa.safetensors").is_file()

    # resume from the latest checkpoint (checkpoint-4) and continue to step 6
    _launch(recipe, "training_args.max_steps=6", "training_args.save_steps=2",
            "training_args.per_device_train_batch_size=2", "--resume", "latest")
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert (out / "checkpoint-6").is_dir()
    at4, at6 = read_gswa_state(out / "checkpoint-4"), read_gswa_state(out / "checkpoint-6")
    assert any(not torch.equal(at4[k], at6[k]) for k in at4)

    # the loss on the training data fell, and the extracted GSWA reproduces the trained logits
    model_dir = data["model"]["name_or_path"]
    processor = load_processor(model_dir)
    ds = ConversationDataset(data["data"]["train_files"], processor, template="plain")
    batch = ConversationCollator(processor.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    start = from_pretrained_with_gswa(model_dir, gswa=smoke.SMOKE_GSWA, **kw).eval()
    trained = from_pretrained_with_gswa(out, **kw).eval()
    fresh = model_class_for(model_dir).from_pretrained(model_dir, **kw).eval()
    gswa_plugin.load(fresh, out / "gswa")
    with torch.no_grad():
        assert float(trained(**batch).loss) < float(start(**batch).loss)
        torch.testing.assert_close(fresh(**batch).logits, trained(**batch).logits)
