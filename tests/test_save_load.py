"""gswa_plugin.save / load: only GSWA's weights and config, bit-exact round trip, clear mismatch errors."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

import gswa_plugin
from gswa_plugin import CheckpointError
from gswa_plugin.testing.tiny import tiny_internvl

from .test_internvl import peaked

SMALL = {"hidden_size": 32, "num_heads": 4}


@pytest.fixture
def saved(tmp_path, internvl_model, internvl_inputs):
    gswa_plugin.enable(internvl_model, {**SMALL, "variant": "self_attn", "temperature": 0.7})
    peaked(internvl_model)
    with torch.no_grad():
        logits = internvl_model(**internvl_inputs).logits
    gswa_plugin.save(internvl_model, tmp_path / "gswa")
    return tmp_path / "gswa", logits, internvl_model


def test_writes_only_gswa_weights_and_config(saved):
    directory, _, model = saved
    assert sorted(p.name for p in directory.iterdir()) == ["gswa.safetensors", "gswa_config.yaml"]
    state = load_file(str(directory / "gswa.safetensors"))
    assert set(state) == set(model.gswa.state_dict())
    data = yaml.safe_load((directory / "gswa_config.yaml").read_text())
    assert data["gswa"]["adapter"] == "internvl" and data["gswa"]["temperature"] == 0.7
    assert data["saved"]["summary_dim"] == model.config.vision_config.hidden_size


def test_round_trip_is_bit_exact(saved, internvl_inputs):
    directory, logits, model = saved
    fresh = tiny_internvl(image_size=56)
    handle = gswa_plugin.load(fresh, directory)
    assert handle.config.temperature == 0.7
    for (n1, p1), (n2, p2) in zip(model.gswa.state_dict().items(), fresh.gswa.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    with torch.no_grad():
        assert torch.equal(fresh(**internvl_inputs).logits, logits)


def test_load_into_enabled_model(saved, internvl_inputs):
    directory, logits, _ = saved
    fresh = tiny_internvl(image_size=56)
    gswa_plugin.enable(fresh, {**SMALL, "temperature": 0.7})
    gswa_plugin.load(fresh, directory)
    with torch.no_grad():
        assert torch.equal(fresh(**internvl_inputs).logits, logits)


def test_override_changes_only_what_it_names(saved, tmp_path, internvl_inputs):
    """A config naming only ``temperature`` changes only that: its unset fields are defaults
    (hidden_size 576, num_heads 8), which neither clash with the checkpoint nor replace its values."""
    directory, logits, _ = saved
    handle = gswa_plugin.load(tiny_internvl(image_size=56), directory, {"temperature": 0.7, "mode": "embed"})
    assert (handle.config.hidden_size, handle.config.num_heads, handle.config.temperature) == (32, 4, 0.7)
    path = tmp_path / "override.yaml"
    path.write_text("gswa:\n  temperature: 2.0\n")
    fresh = tiny_internvl(image_size=56)
    handle = gswa_plugin.load(fresh, directory, path)
    assert (handle.config.hidden_size, handle.config.temperature) == (32, 2.0)
    with torch.no_grad():
        assert not torch.equal(fresh(**internvl_inputs).logits, logits), "the new temperature acts"
    with pytest.raises(CheckpointError, match=r"hidden_size: checkpoint has 32, config asks for 64"):
        gswa_plugin.load(tiny_internvl(image_size=56), directory, {"hidden_size": 64, "num_heads": 4})


def test_variant_mismatch(saved):
    directory, _, _ = saved
    fresh = tiny_internvl(image_size=56)
    gswa_plugin.enable(fresh, {**SMALL, "variant": "cross_attn"})
    with pytest.raises(CheckpointError, match=r"variant: checkpoint has 'self_attn', model has 'cross_attn'"):
        gswa_plugin.load(fresh, directory)
    with pytest.raises(CheckpointError, match=r"variant: checkpoint has 'self_attn', config asks for 'cosine'"):
        gswa_plugin.load(tiny_internvl(image_size=56), directory, {"variant": "cosine"})


def test_hidden_size_mismatch(saved):
    directory, _, _ = saved
    wider = tiny_internvl(image_size=56, vision_hidden=48)
    with pytest.raises(CheckpointError, match=r"hidden sizes differ: .* width 32 but this model's vision encoder gives 48"):
        gswa_plugin.load(wider, directory)
    assert not gswa_plugin.is_enabled(wider), "a failed load leaves the model as it was"
    fresh = tiny_internvl(image_size=56)
    gswa_plugin.enable(fresh, {"hidden_size": 64, "num_heads": 4})
    with pytest.raises(CheckpointError, match=r"hidden_size: checkpoint has 32, model has 64"):
        gswa_plugin.load(fresh, directory)


def test_adapter_mismatch(saved):
    directory, _, _ = saved
    data = yaml.safe_load((directory / "gswa_config.yaml").read_text())
    fresh = tiny_internvl(image_size=56)

    from gswa_plugin import Adapter, hookimpl, plugins

    class Other(Adapter):
        name = "other_family"
        description = "test"

        def matches(self, model):
            return False

        def summary_dim(self, model, config):
            return 32

        def install(self, model, handle):
            return None

    class P:
        @hookimpl
        def gswa_register_adapters(self, register):
            register(Other())

    plugins.register_plugin(P(), name="other")
    data["gswa"]["adapter"] = "other_family"
    (directory / "gswa_config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match=r"saved for the 'other_family' adapter but this InternVLForConditionalGeneration is handled by 'internvl'"):
        gswa_plugin.load(fresh, directory)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is not a saved GSWA directory"):
        gswa_plugin.load(tiny_internvl(image_size=56), tmp_path)


def test_state_dict_and_device_moves_with_model(internvl_model):
    gswa_plugin.enable(internvl_model, SMALL)
    assert any(k.startswith("gswa.") for k in internvl_model.state_dict())
    internvl_model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in internvl_model.gswa.parameters())
