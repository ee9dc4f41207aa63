"""The one schema mechanism: messages for every kind of problem, and the exported JSON Schemas.

The JSON Schemas are checked with `jsonschema` against the project's own files (the packaged
default, the docs' examples, every recipe), so what editors are told matches what the library
accepts.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from gswa_plugin.cli import app
from gswa_plugin.config import GSWAConfig, HostDeclaration, default_config_path
from gswa_plugin.errors import ConfigError
from gswa_plugin.integrations.transformers.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def _schema(kind: str) -> dict:
    result = CliRunner().invoke(app, ["schema", kind])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _errors(schema: dict, instance: object) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(instance)]


def test_config_schema_accepts_the_projects_files_and_refuses_mistakes():
    schema = _schema("config")
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in (default_config_path(), ROOT / "docs/examples/gswa.yaml", ROOT / "docs/examples/declarative_got_ocr2.yaml"):
        assert not _errors(schema, yaml.safe_load(path.read_text())), path
    assert not _errors(schema, {"gswa": GSWAConfig().to_dict()})
    assert _errors(schema, {"gswa": {"mode": "embedd"}})  # not one of the modes
    assert _errors(schema, {"gswa": {"varient": "cosine"}})  # unknown key
    assert _errors(schema, {"gswa": {"hidden_size": "big"}})
    assert _errors(schema, {"gswa": {"temperature": 0}})  # exclusive minimum
    assert _errors(schema, {"other": 1})  # no gswa block


def test_recipe_schema_accepts_every_recipe():
    transformers_recipes = [p for p in RECIPES if yaml.safe_load(p.read_text()).get("host") == "transformers"]
    assert transformers_recipes
    schema = _schema("recipe")
    for path in transformers_recipes:
        assert not _errors(schema, yaml.safe_load(path.read_text())), path
    bad = yaml.safe_load(transformers_recipes[0].read_text())
    bad["freeze"] = "everything"
    assert _errors(schema, bad)


def test_declaration_schema_matches_the_model():
    schema = _schema("declaration")
    block = yaml.safe_load((ROOT / "docs/examples/declarative_got_ocr2.yaml").read_text())["gswa"]["declare"]
    assert not _errors(schema, block)
    HostDeclaration.parse(block)  # what the schema accepts, the model accepts
    assert _errors(schema, {**block, "global_view": "middle"})
    assert _errors(schema, {k: v for k, v in block.items() if k != "seam"})  # seam is required


def test_schema_written_to_a_file(tmp_path):
    out = tmp_path / "gswa.schema.json"
    result = CliRunner().invoke(app, ["schema", "config", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["properties"]["gswa"]["additionalProperties"] is False


@pytest.mark.parametrize(
    "data, message",
    [
        ({"data": {"train_files": ["a.jsonl", 3]}}, "`data.train_files[1]` must be str, got int 3"),
        ({"data": {"train_files": []}}, "`data.train_files`"),
        ({"model": "x"}, "`model` must be a mapping, got str 'x'"),
        ({"lora": {"dropout": float("nan")}}, "`lora.dropout` must be a finite number"),
        ({"freez": "gswa"}, "unknown key `freez`; did you mean `freeze`?"),
        ({"freeze": "gswa+projetor"}, "did you mean `gswa+projector`?"),
        ({"gswa": {"declare": {"seam": 5}, "adapter": "declarative"}}, "`gswa.declare.seam` must be a dotted path"),
    ],
)
def test_recipe_messages_name_the_dotted_key(data, message):
    recipe = {"model": {"name_or_path": "m"}, "data": {"train_files": ["a.jsonl"]}, "training_args": {"output_dir": "o"}}
    for key, value in data.items():
        recipe[key] = {**recipe[key], **value} if isinstance(recipe.get(key), dict) and isinstance(value, dict) else value
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(recipe)
    assert message in str(info.value)


def test_nested_assignment_is_validated_too():
    cfg = GSWAConfig.from_dict(yaml.safe_load((ROOT / "docs/examples/declarative_got_ocr2.yaml").read_text()))
    with pytest.raises(ConfigError, match="`seam` must be a dotted path"):
        cfg.declare.seam = "not a path"
    assert cfg.declare.seam == "model.get_image_features"
    with pytest.raises(ConfigError, match="`declare` is read only by `adapter: declarative`"):
        cfg.adapter = None
    assert cfg.adapter == "declarative"


def test_a_config_round_trips_through_yaml_with_its_declaration(tmp_path):
    cfg = GSWAConfig.from_dict(yaml.safe_load((ROOT / "docs/examples/declarative_got_ocr2.yaml").read_text()))
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert GSWAConfig.from_yaml(path) == cfg
    assert "module" not in yaml.safe_load(path.read_text())["gswa"]["declare"].get("tiles_from", {})


def test_rules_see_settings_objects_given_as_values():
    from gswa_plugin.integrations.transformers.config import LoraSection, ModelSection

    with pytest.raises(ConfigError, match="would train the language model in full and through LoRA"):
        TrainConfig(
            model=ModelSection(name_or_path="m"),
            data={"train_files": ["a.jsonl"]},
            training_args={"output_dir": "o"},
            lora=LoraSection(enabled=True),
            freeze="all",
        )
