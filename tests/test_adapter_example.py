"""The docs' custom adapter example (docs/examples/custom_adapter.py) runs as a plugin would."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import gswa_plugin
from gswa_plugin import plugins
from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_hosts import tiny_llava_next, tiny_llava_next_processor

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "custom_adapter.py"
SMALL = {"hidden_size": 32, "num_heads": 4}


@pytest.fixture
def example_plugin():
    spec = importlib.util.spec_from_file_location("custom_adapter_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugins.register_plugin(module, name="custom_adapter_example")
    return module


@pytest.fixture(scope="module")
def inputs():
    proc = tiny_llava_next_processor()
    return proc(
        text=["<image> describe the image", "what is in the picture <image> ?"],
        images=[sample_image("astronaut"), sample_image("coffee").resize((300, 100))],
        return_tensors="pt",
        padding=True,
    )


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_example_registers_through_the_hook(example_plugin):
    assert plugins.adapter_sources()["my_llava_next"] == "custom_adapter_example"
    # registered after the built-ins: the built-in adapter still wins when none is named
    assert gswa_plugin.api.find_adapter(tiny_llava_next()).name == "llava_next"


def test_example_adapter_is_identity_at_start_and_undoes_cleanly(example_plugin, inputs):
    model = tiny_llava_next()
    base = _logits(model, inputs)
    with torch.no_grad():
        gen0 = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    handle = gswa_plugin.enable(model, {**SMALL, "adapter": "my_llava_next"})
    assert torch.equal(_logits(model, inputs), base)
    with torch.no_grad():  # generate() reads get_image_features' signature: the wrapper keeps it
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False), gen0)
    assert handle.last_batch.layout.views_per_image == (5, 4)
    gswa_plugin.disable(model)
    assert "get_image_features" not in vars(model.model)
    assert not model.model.vision_tower._forward_hooks and not model.model.multi_modal_projector._forward_hooks
    assert torch.equal(_logits(model, inputs), base)


def test_example_adapter_weights_like_the_builtin_one(example_plugin, inputs):
    peaked = {**SMALL, "identity_init": False, "temperature": 0.1}
    mine, builtin = tiny_llava_next(), tiny_llava_next()
    gswa_plugin.enable(mine, {**peaked, "adapter": "my_llava_next"})
    gswa_plugin.enable(builtin, peaked)
    got, want = _logits(mine, inputs), _logits(builtin, inputs)
    assert torch.equal(got, want)
    for a, b in zip(gswa_plugin.last_weights(mine), gswa_plugin.last_weights(builtin)):
        assert torch.equal(a, b) and not torch.allclose(a, torch.ones_like(a))
