"""Each freezing policy trains exactly the parameters it names."""

from __future__ import annotations

import pytest

import gswa_plugin
from gswa_plugin.errors import ConfigError
from gswa_plugin.integrations.transformers import FREEZE_POLICIES, apply_freezing
from gswa_plugin.testing.tiny import tiny_internvl

GSWA = {"hidden_size": 32, "num_heads": 2}
PREFIXES = {
    "gswa": ("gswa.",),
    "projector": ("model.multi_modal_projector.",),
    "language_model": ("model.language_model.", "lm_head."),
    "vision": ("model.vision_tower.",),
}


def _model():
    model = tiny_internvl(image_size=56)
    gswa_plugin.enable(model, GSWA)
    return model


@pytest.mark.parametrize("policy", list(FREEZE_POLICIES))
def test_policy_trains_exactly_its_parts(policy):
    model = _model()
    trainable = set(apply_freezing(model, policy))
    expected = {
        n for n, _ in model.named_parameters()
        if any(n.startswith(p) for part in FREEZE_POLICIES[policy] for p in PREFIXES[part])
    }
    assert trainable == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    # every parameter of the model belongs to one of the four parts
    assert all(any(n.startswith(p) for ps in PREFIXES.values() for p in ps) for n, _ in model.named_parameters())


def test_lora_trains_adapters_not_the_language_model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model(), LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    trainable = apply_freezing(model, "gswa+projector", lora=True)
    assert any("lora_A" in n for n in trainable)
    assert all(
        "lora_" in n or ".gswa." in n or "multi_modal_projector" in n for n in trainable
    ), [n for n in trainable if "lora_" not in n]
    assert not any("vision_tower" in n for n in trainable)


def test_policy_without_gswa_enabled_is_refused():
    with pytest.raises(ConfigError, match="enable GSWA before freezing"):
        apply_freezing(tiny_internvl(image_size=56), "gswa")


def test_unknown_policy_is_refused():
    with pytest.raises(ConfigError, match="must be one of"):
        apply_freezing(_model(), "projector-only")
