"""Recipe validation: every problem at once, overrides with dotted keys."""

from __future__ import annotations

import pytest
import yaml

from gswa_plugin.errors import ConfigError
from gswa_plugin.integrations.transformers.config import TrainConfig, apply_overrides, load_recipe, parse_overrides

GOOD = {
    "host": "transformers",
    "model": {"name_or_path": "/models/x"},
    "data": {"train_files": ["a.jsonl"]},
    "training_args": {"output_dir": "runs/x", "max_steps": 3},
    "gswa": {"hidden_size": 32, "num_heads": 2},
}


def test_a_good_recipe_fills_defaults():
    cfg = TrainConfig.from_dict(GOOD)
    assert cfg.freeze == "gswa" and cfg.model.dtype == "bfloat16" and cfg.lora.enabled is False
    assert cfg.gswa_config().hidden_size == 32
    assert cfg.diagnostics.thresholds().tile_dominance_share == 0.9


def test_every_problem_is_reported_at_once():
    bad = {
        "host": "transformers",
        "modle": {},
        "model": {"dtype": "fp8"},
        "data": {"train_files": "a.jsonl", "on_missing_image": "ignore"},
        "freeze": "gswa+vision",
        "gswa_learning_rate": -1,
        "lora": {"enabled": True, "r": 0},
        "training_args": {"learnig_rate": 1e-4},
        "gswa": {"variant": "self_atn"},
    }
    bad["freeze"] = "gswa+projector+language_model"
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(bad)
    text = str(info.value)
    for fragment in [
        "unknown key `modle`; did you mean `model`?",
        "`model.name_or_path` is required",
        "`model.dtype` must be one of",
        "`data.train_files` must be a list of str",
        "`data.on_missing_image` must be one of 'error', 'skip'",
        "`gswa_learning_rate` must be > 0",
        "`lora.r` must be >= 1",
        "unknown key `training_args.learnig_rate`; did you mean `learning_rate`?",
        "`training_args.output_dir` is required",
        "`gswa.variant` must be one of",
        "`lora.enabled` with `freeze: gswa+projector+language_model`",
    ]:
        assert fragment in text, fragment
    assert len(info.value.problems) >= 11


def test_overrides_reach_into_sections_and_parse_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    cfg = load_recipe(path, ["training_args.max_steps=10", "freeze=gswa+projector", "gswa.num_layers=0",
                             "lora.target_modules=[q_proj, v_proj]", "model.gswa_checkpoint="])
    assert cfg.training_args["max_steps"] == 10 and cfg.freeze == "gswa+projector"
    assert cfg.gswa_config().num_layers == 0 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.model.gswa_checkpoint is None
    with pytest.raises(ConfigError, match="must look like `key=value`"):
        parse_overrides(["training_args.max_steps"])
    assert apply_overrides({"a": 1}, ["b.c=2"]) == {"a": 1, "b": {"c": 2}}
    with pytest.raises(ConfigError, match=r"in .*r\.yaml"):
        load_recipe(path, ["training_args.max_step=10"])
