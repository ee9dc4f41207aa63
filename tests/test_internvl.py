"""The native InternVL adapter on a tiny real InternVLForConditionalGeneration with the real processor.

Checks look at what the language model actually receives (its ``inputs_embeds``) and at logits.
"""

from __future__ import annotations

import pytest
import torch

import gswa_plugin
from gswa_plugin import LayoutError, NotEnabledError

from .conftest import lm_inputs_embeds


def peaked(model, seed: int = 3):
    """Give the enabled GSWA random (non-identity) parameters, so weights are non-uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.gswa.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_processor_layout_matches_adapter(internvl_model, internvl_inputs):
    handle = gswa_plugin.enable(internvl_model, {"hidden_size": 32, "num_heads": 4})
    with torch.no_grad():
        internvl_model(**internvl_inputs)
    layout = handle.last_batch.layout
    # astronaut (square) -> 2x2 tiles + thumbnail; 300x100 -> 3x1 tiles + thumbnail, thumbnail last
    assert layout.views_per_image == (5, 4)
    assert internvl_inputs["pixel_values"].shape[0] == 9
    assert layout.global_indices() == [4, 8]
    assert [w.shape[0] for w in gswa_plugin.last_weights(internvl_model)] == [4, 3]


@pytest.mark.parametrize("variant", ["self_attn", "cross_attn"])
def test_untrained_gswa_is_bit_identical(internvl_model, internvl_inputs, variant):
    with torch.no_grad():
        base = internvl_model(**internvl_inputs).logits
        gen0 = internvl_model.generate(
            **internvl_inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    gswa_plugin.enable(internvl_model, {"variant": variant, "hidden_size": 32, "num_heads": 4})
    with torch.no_grad():
        out = internvl_model(**internvl_inputs).logits
        gen1 = internvl_model.generate(
            **internvl_inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    assert torch.equal(base, out)
    assert torch.equal(gen0.sequences, gen1.sequences)
    for a, b in zip(gen0.logits, gen1.logits):  # step by step
        assert torch.equal(a, b)
    assert all(torch.equal(w, torch.ones_like(w)) for w in gswa_plugin.last_weights(internvl_model))


def test_lm_receives_exactly_w_times_each_tile(internvl_model, internvl_inputs):
    base = lm_inputs_embeds(internvl_model, **internvl_inputs)
    handle = gswa_plugin.enable(internvl_model, {"hidden_size": 32, "num_heads": 4})
    peaked(internvl_model)
    got = lm_inputs_embeds(internvl_model, **internvl_inputs)
    w = handle.last_batch.weights
    assert not torch.allclose(w, torch.ones_like(w)), "weights should be non-uniform here"
    ids = internvl_inputs["input_ids"]
    pos = (ids == internvl_model.config.image_token_id).nonzero()  # row-major: view after view
    tokens_per_view = internvl_model.config.image_seq_length
    view_of_pos = torch.arange(pos.shape[0]) // tokens_per_view
    b, s = pos[:, 0], pos[:, 1]
    expected = base[b, s] * w[view_of_pos][:, None]
    assert torch.equal(got[b, s], expected)
    thumbs = [i for i in handle.last_batch.layout.global_indices() if i is not None]
    thumb_rows = torch.isin(view_of_pos, torch.tensor(thumbs))
    assert torch.equal(got[b, s][thumb_rows], base[b, s][thumb_rows])  # thumbnails unchanged
    text = ids != internvl_model.config.image_token_id
    assert torch.equal(got[text], base[text])  # text untouched


def test_backward_reaches_every_gswa_parameter(internvl_model, internvl_inputs):
    gswa_plugin.enable(internvl_model, {"variant": "self_attn", "hidden_size": 32, "num_heads": 4, "num_layers": 2})
    peaked(internvl_model)
    internvl_model.train()
    labels = internvl_inputs["input_ids"].clone()
    out = internvl_model(**internvl_inputs, labels=labels)
    out.loss.backward()
    for name, p in internvl_model.gswa.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_disable_restores_original(internvl_model, internvl_inputs):
    inner = internvl_model.model
    with torch.no_grad():
        base = internvl_model(**internvl_inputs).logits
    gswa_plugin.enable(internvl_model, {"variant": "cosine"})
    assert "get_image_features" in vars(inner) and "generate" in vars(internvl_model)
    with torch.no_grad():
        changed = internvl_model(**internvl_inputs).logits
    assert not torch.equal(base, changed)
    gswa_plugin.disable(internvl_model)
    assert "get_image_features" not in vars(inner) and "generate" not in vars(internvl_model)
    assert not hasattr(internvl_model, "gswa")
    assert not inner._forward_pre_hooks and not inner._forward_hooks
    with torch.no_grad():
        assert torch.equal(internvl_model(**internvl_inputs).logits, base)
    with pytest.raises(NotEnabledError, match="not enabled"):
        gswa_plugin.disable(internvl_model)


def test_enable_twice_is_an_error(internvl_model):
    gswa_plugin.enable(internvl_model)
    with pytest.raises(gswa_plugin.AlreadyEnabledError, match="already enabled"):
        gswa_plugin.enable(internvl_model)


def test_layout_from_set_tiles_and_errors(internvl_model, internvl_inputs):
    handle = gswa_plugin.enable(internvl_model, {"variant": "cosine"})
    pv = internvl_inputs["pixel_values"]
    with pytest.raises(LayoutError, match="cannot tell how they split into images"):
        internvl_model.model.get_image_features(pixel_values=pv)
    with gswa_plugin.tiles(internvl_model, [5, 4]):
        internvl_model.model.get_image_features(pixel_values=pv)
    assert handle.last_batch.layout.views_per_image == (5, 4)
    gswa_plugin.set_tiles(internvl_model, [4, 4])
    with pytest.raises(LayoutError, match=r"set_tiles\(\) describes 8 tiles \(\[4, 4\] per image\) but 9 reached"):
        internvl_model.model.get_image_features(pixel_values=pv)
    gswa_plugin.set_tiles(internvl_model, None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_follows_host_dtype(internvl_inputs, dtype):
    from gswa_plugin.testing.tiny import tiny_internvl

    model = tiny_internvl(image_size=56).to(dtype)
    inputs = dict(internvl_inputs, pixel_values=internvl_inputs["pixel_values"].to(dtype))
    with torch.no_grad():
        base = model(**inputs).logits
    gswa_plugin.enable(model, {"hidden_size": 32, "num_heads": 4})
    assert all(p.dtype == dtype for p in model.gswa.parameters())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, base)
    peaked(model)
    with torch.no_grad():
        out = model(**inputs).logits
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("mode", ["value", "attn_bias"])
def test_generated_image_token_is_text_in_attention_modes(internvl_model, internvl_inputs, mode):
    """A decode step whose token happens to be the image-context token carries no image: weight 1."""
    gswa_plugin.enable(internvl_model, {"mode": mode, "hidden_size": 32, "num_heads": 4})
    peaked(internvl_model)
    with torch.no_grad():
        out = internvl_model(**internvl_inputs, use_cache=True)
        step = torch.full((2, 1), internvl_model.config.image_token_id)
        mask = torch.cat([internvl_inputs["attention_mask"], torch.ones(2, 1, dtype=torch.long)], dim=1)
        # transformers 5.24 names the cache `cache`; earlier 5.x `past_key_values`
        cache_kw = "cache" if hasattr(out, "cache") else "past_key_values"
        nxt = internvl_model(input_ids=step, attention_mask=mask, use_cache=True, **{cache_kw: getattr(out, cache_kw)})
    assert torch.isfinite(nxt.logits).all()
