"""Every YAML file under recipes/ (recursively) validates without a GPU.

Generic over recipe kinds, since several hosts ship recipes: a top-level ``gswa:`` block is
validated by GSWAConfig; a ``host: transformers`` recipe by the training config (every key,
every TrainingArguments name); an accelerate config by accelerate's own loader. Files and
commands the recipes point at must exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from gswa_plugin.config import GSWAConfig
from gswa_plugin.integrations.transformers.config import TrainConfig, is_training_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
YAML_FILES = sorted(p for p in RECIPES.rglob("*") if p.suffix in (".yaml", ".yml"))


def _is_accelerate_config(data) -> bool:
    return isinstance(data, dict) and "distributed_type" in data and "compute_environment" in data


def test_recipes_exist():
    assert YAML_FILES, "no recipe files found under recipes/"
    kinds = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in YAML_FILES]
    assert any(is_training_recipe(d) for d in kinds)
    assert any(_is_accelerate_config(d) for d in kinds)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_yaml_validates(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: a recipe YAML must be a mapping"
    if "gswa" in data:
        GSWAConfig.from_dict(data["gswa"] or {}, source=str(path))
    if is_training_recipe(data):
        cfg = TrainConfig.from_dict(data, source=str(path))
        assert cfg.training_args["output_dir"]
    if _is_accelerate_config(data):
        from accelerate.commands.config.config_args import load_config_from_file

        load_config_from_file(str(path))
        ds_file = (data.get("deepspeed_config") or {}).get("deepspeed_config_file")
        if ds_file:
            assert (ROOT / ds_file).is_file(), f"{path}: deepspeed_config_file {ds_file} does not exist"
            json.loads((ROOT / ds_file).read_text(encoding="utf-8"))


def test_commands_in_recipes_point_at_existing_files():
    texts = [p for p in RECIPES.rglob("*") if p.suffix in (".yaml", ".md", ".sh")]
    for p in texts:
        for ref in re.findall(r"(recipes/[\w./-]+\.(?:yaml|json|py))", p.read_text(encoding="utf-8")):
            assert (ROOT / ref).is_file(), f"{p} names {ref}, which does not exist"


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.json")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_json_configs_parse(path):
    json.loads(path.read_text(encoding="utf-8"))
