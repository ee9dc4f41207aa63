"""Issue 12's "done when": 20 CPU training steps through `gswa train` (the installed console
script) with `mode: value` and activation (gradient) checkpointing of both kinds change GSWA's
parameters. Before the per-call weights, the reentrant kind trained nothing (no gradient
reached GSWA) and the non-reentrant kind stopped with torch's CheckpointError."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gswa_plugin.integrations.transformers import read_gswa_state, smoke

GSWA_CMD = Path(sys.executable).with_name("gswa")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc")
    model_dir = smoke.write_model(root / "model")
    files = smoke.write_data(root / "data", formats=("llava",))
    return root, model_dir, files


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_gswa_train_value_mode_with_checkpointing_changes_gswa(setup, tmp_path, reentrant):
    root, model_dir, files = setup
    out = tmp_path / "out"
    recipe = smoke.smoke_recipe(model_dir, files, out)
    recipe["gswa"] = {**recipe.get("gswa", {}), "mode": "value"}
    recipe["training_args"].update(
        {
            "max_steps": 20,
            "save_steps": 20,
            "per_device_train_batch_size": 2,
            "learning_rate": 0.01,
            "activation_checkpointing": True,
            "activation_checkpointing_kwargs": {"use_reentrant": reentrant},
        }
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    cmd = [str(GSWA_CMD) if GSWA_CMD.exists() else shutil.which("gswa") or "gswa", "train", str(path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    start = read_gswa_state(model_dir)  # the base model: GSWA at its identity initialisation, if saved
    trained = read_gswa_state(out / "checkpoint-20")
    assert trained, f"no gswa.* tensors in {out / 'checkpoint-20'}"
    from gswa_plugin.integrations.transformers import from_pretrained_with_gswa

    fresh = from_pretrained_with_gswa(model_dir, gswa={**smoke.SMOKE_GSWA, "mode": "value"})
    initial = {k: v.float() for k, v in fresh.gswa.state_dict().items()}
    if start:
        initial = {k: v.float() for k, v in start.items()}
    moved = {k: float((trained[k].float() - initial[k]).abs().max()) for k in initial}
    assert all(torch.isfinite(torch.tensor(list(moved.values())))), moved
    still = [k for k, d in moved.items() if d == 0.0 and "query" in k]
    assert max(moved.values()) > 1e-4 and not still, f"GSWA did not train under checkpointing: {moved}"
