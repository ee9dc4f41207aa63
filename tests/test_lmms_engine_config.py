"""The lmms-engine integration without lmms-engine: YAML validation, the loud patch failure, the
InternVL data processor on a real tiny processor, the recipes, and the missing-package error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

import gswa_plugin
from gswa_plugin.errors import AdapterNotFoundError, ConfigError, HostNotInstalledError
from gswa_plugin.integrations.lmms_engine import GSWAPatchFailed, apply_gswa, gswa_settings, model_type_of, register
from gswa_plugin.integrations.lmms_engine.internvl import InternVLDataProcessor
from gswa_plugin.integrations.lmms_engine.launch import config_yaml_path, prepare

REPO = Path(__file__).resolve().parents[1]


def _cfg(**kwargs) -> dict:
    return {"model_config": {"load_from_pretrained_path": "x", "monkey_patch_kwargs": kwargs}}


def test_gswa_is_on_only_with_the_patch_type():
    assert gswa_settings({}) == (False, None)
    assert gswa_settings(_cfg(patch_type=["liger"])) == (False, None)
    on, cfg = gswa_settings(_cfg(patch_type=["liger", "gswa"], gswa={"variant": "cosine"}))
    assert on and cfg.variant == "cosine"
    on, cfg = gswa_settings(_cfg(patch_type="gswa"))
    assert on and cfg == gswa_plugin.GSWAConfig()


def test_a_gswa_block_without_the_patch_type_is_an_error():
    with pytest.raises(ConfigError, match="lacks `gswa`"):
        gswa_settings(_cfg(patch_type=["liger"], gswa={"variant": "cosine"}))


def test_every_problem_of_the_block_is_reported_before_training(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_cfg(patch_type=["gswa"], gswa={"variant": "selfattn", "num_heads": 0})))
    with pytest.raises(ConfigError) as info:
        prepare([f"config_yaml={path}"])
    text = str(info.value)
    assert str(path) in text and "self_attn" in text and "num_heads" in text


def test_config_yaml_argument_and_model_type(tmp_path):
    assert config_yaml_path(["foo=1", "config_yaml=a.yaml"]) == Path("a.yaml")
    assert config_yaml_path(["+config_yaml=b.yaml"]) == Path("b.yaml")
    assert config_yaml_path([]) is None
    assert model_type_of({"model_config": {"load_from_config": {"model_type": "internvl"}}}) == "internvl"
    (tmp_path / "config.json").write_text('{"model_type": "llava_onevision"}')
    assert model_type_of({"model_config": {"load_from_pretrained_path": str(tmp_path)}}) == "llava_onevision"
    assert model_type_of({"model_config": {"load_from_pretrained_path": "org/hub-id"}}) is None


def test_a_failing_patch_escapes_lmms_engines_log_and_skip(internvl_model):
    """lmms-engine wraps monkey patches in `except Exception`; GSWA's failure must not be skipped."""
    with pytest.raises(GSWAPatchFailed) as info:
        try:
            apply_gswa(torch.nn.Linear(2, 2), {})
        except Exception:  # what lmms-engine's runner does
            pytest.fail("the failure was swallowed by `except Exception`")
    assert isinstance(info.value.error, AdapterNotFoundError)
    with pytest.raises(GSWAPatchFailed) as info:
        apply_gswa(internvl_model, {"variant": "nope"})
    assert isinstance(info.value.error, ConfigError)


def test_the_patch_enables_gswa_once(internvl_model):
    apply_gswa(internvl_model, {"variant": "cosine"})
    apply_gswa(internvl_model, {"variant": "cosine"})  # lmms-engine may apply patches twice
    assert gswa_plugin.get_handle(internvl_model).adapter.name == "internvl"


def test_missing_lmms_engine_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmms_engine", None)
    monkeypatch.setitem(sys.modules, "lmms_engine.models", None)
    with pytest.raises(HostNotInstalledError, match=r"pip install 'gswa-plugin\[lmms-engine\]'"):
        register()


def test_internvl_data_processor_on_the_real_processor(tmp_path, photos):
    """Chat messages -> input_ids with each image expanded by InternVLProcessor, labels only on the
    assistant turn, and every tile of every image in pixel_values."""
    from gswa_plugin.hf import save_processor
    from gswa_plugin.testing.tiny import tiny_internvl_processor
    from tests.hosts_lmms_engine.fixtures import CHAT_TEMPLATE

    proc = tiny_internvl_processor(image_size=56, max_patches=6)
    proc.tokenizer.chat_template = CHAT_TEMPLATE  # where many checkpoints keep it
    save_processor(proc, tmp_path)
    data = InternVLDataProcessor(type("Cfg", (), {"processor_name": str(tmp_path), "processor_type": "internvl"})())
    data.build()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a person"}]},
    ]
    out = data.process(images=[photos[0]], hf_messages=messages)
    tiles = out["pixel_values"].shape[0]
    assert tiles == 5  # 2x2 tiles + thumbnail of the square astronaut
    ids, labels = out["input_ids"], out["labels"]
    assert int((ids == proc.image_token_id).sum()) == tiles * proc.image_seq_length
    trained = labels != -100
    assert trained.any() and not trained[: int((ids == proc.image_token_id).nonzero()[-1])].any()
    assert proc.tokenizer.decode(ids[trained]).split()[-2:] == ["a", "person"]


def _recipe_yamls() -> list[Path]:
    """The lmms-engine training configs among the recipes (dataset lists left out)."""
    paths = sorted((REPO / "recipes").glob("*/lmms-engine/*.yaml"))
    return [p for p in paths if "trainer_type" in (yaml.safe_load(p.read_text()) or {})]


@pytest.mark.parametrize("path", _recipe_yamls(), ids=lambda p: str(p.relative_to(REPO)))
def test_lmms_engine_recipes_turn_gswa_on_with_a_valid_block(path):
    config = yaml.safe_load(path.read_text())
    on, cfg = gswa_settings(config)
    assert on and cfg is not None
    assert config["trainer_type"] in ("hf_trainer", "fsdp2_trainer")
    assert config["dataset_config"]["processor_config"]["processor_type"]
    assert path.read_text().startswith("#"), "a recipe opens with its install and launch commands"


def test_there_are_lmms_engine_recipes():
    names = {p.parent.parent.name for p in _recipe_yamls()}
    assert {"internvl2-2b", "llava-onevision"} <= names


def test_internvl_data_processor_renders_internlm2_chat_as_internvl_trains(tmp_path, photos):
    """With the converted checkpoint's chat template, the lmms-engine processor gives InternVL's
    `internlm2-chat` training text: the system message once, no newline after <|im_end|>, stripped
    text, targets = each answer with its <|im_end|> (the assistant header masked) -- the same
    text the transformers trainer renders (data.render_segments)."""
    from gswa_plugin.hf import save_processor
    from gswa_plugin.integrations.transformers.data import Turn, render_segments
    from gswa_plugin.testing.tiny import tiny_internvl_processor
    from gswa_plugin.tools.convert_internvl2 import CHAT_TEMPLATE, SYSTEM_PROMPT

    proc = tiny_internvl_processor(image_size=56, max_patches=6)
    proc.tokenizer.chat_template = CHAT_TEMPLATE  # as `gswa convert-internvl2` saves it
    save_processor(proc, tmp_path)
    data = InternVLDataProcessor(type("Cfg", (), {"processor_name": str(tmp_path), "processor_type": "internvl"})())
    data.build()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " describe the image\n"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a person "}]},
        {"role": "user", "content": [{"type": "text", "text": "what colour ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    pieces = data._segments(messages)
    text = "".join(t for t, _ in pieces)
    assert text == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|><|im_start|>user\n<IMG_CONTEXT>\ndescribe the image<|im_end|>"
        "<|im_start|>assistant\na person<|im_end|><|im_start|>user\nwhat colour ?<|im_end|>"
        "<|im_start|>assistant\nred<|im_end|>"
    )
    assert [t for t, target in pieces if target] == ["a person<|im_end|>", "red<|im_end|>"]
    turns = [Turn("user", "<image>\ndescribe the image"), Turn("assistant", "a person"),
             Turn("user", "what colour ?"), Turn("assistant", "red")]
    ours = render_segments(turns, "internlm2", None, system_prompt=SYSTEM_PROMPT)
    assert "".join(t for t, _ in ours).replace("<image>", "<IMG_CONTEXT>") == text
    out = data.process(images=[photos[0]], hf_messages=messages)
    assert int((out["input_ids"] == proc.image_token_id).sum()) == out["pixel_values"].shape[0] * proc.image_seq_length
