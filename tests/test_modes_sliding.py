"""`attn_bias` with sliding-window attention layers (Qwen2 ``use_sliding_window``, Gemma3's
``sliding_attention`` layers, Mistral): a sliding layer's KV cache keeps only the last
``sliding_window - 1`` positions, so during a decode step its keys are the *last* positions of
the sequence, not the first. The reference is explicit: the host (GSWA disabled) recomputes the
whole sequence without a cache under an attention function that adds log(w) of every key to the
scores before the softmax (the host's mask, sliding window included, added as usual).
"""

from __future__ import annotations

import pytest
import torch

import gswa_plugin
from gswa_plugin.apply import placeholder_position_weights
from gswa_plugin.testing.tiny import tiny_internvl_config
from tests.conftest import TILE
from tests.test_modes import SMALL, peaked, set_attn

WINDOW = 10
REF = "gswa_test_reference_bias"


def sliding_internvl():
    """The tiny InternVL whose Qwen2 language model has a sliding layer (window 10), then a full one."""
    from transformers import InternVLForConditionalGeneration

    cfg = tiny_internvl_config(image_size=TILE)
    text = cfg.text_config
    text.use_sliding_window, text.sliding_window = True, WINDOW
    text.layer_types = ["sliding_attention", "full_attention"]
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    assert [layer.self_attn.sliding_window for layer in model.model.language_model.layers] == [WINDOW, None]
    return model


class _Reference:
    """An eager attention function that adds ``log_w`` ``[batch, positions]`` to the scores of the
    keys (every key present: the caller runs without a cache), registered under ``REF``."""

    log_w: torch.Tensor | None = None

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        rep = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        scores = query @ k.transpose(-1, -2) * scaling
        assert self.log_w is not None and self.log_w.shape[-1] == k.shape[-2]
        scores = scores + self.log_w[:, None, None, :].to(scores.dtype)
        if attention_mask is not None:
            scores = scores + attention_mask[..., : k.shape[-2]]
        probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        return (probs @ v).transpose(1, 2).contiguous(), probs

    def __enter__(self):
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        from transformers.modeling_utils import AttentionInterface

        AttentionInterface.register(REF, self)
        AttentionMaskInterface.register(REF, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["eager"])
        return self

    def __exit__(self, *exc):
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        ALL_ATTENTION_FUNCTIONS._global_mapping.pop(REF, None)
        ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.pop(REF, None)


@pytest.fixture
def one_prompt(internvl_processor, photos):
    """One prompt with the image first, so that a decode step's window holds tile tokens."""
    return internvl_processor(text=["<IMG_CONTEXT> describe"], images=[photos[0]], return_tensors="pt")


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attn_bias_with_sliding_window_layers_matches_an_explicit_reference(one_prompt, impl, cache):
    model = sliding_internvl()
    set_attn(model, impl)
    ids = one_prompt["input_ids"]
    steps = 6
    assert ids.shape[1] > WINDOW + 4 * 2  # the window excludes most of the image at every decode step
    handle = gswa_plugin.enable(model, {**SMALL, "mode": "attn_bias"})
    peaked(model)
    with torch.no_grad():
        model(**one_prompt)
    view_w = handle.last_batch.weights.detach().clone()
    assert (view_w - 1).abs().max() > 0.1
    with torch.no_grad():
        out = model.generate(
            **one_prompt, max_new_tokens=steps, do_sample=False, use_cache=True, cache_implementation=cache,
            output_logits=True, return_dict_in_generate=True,
        )
    kept = out.past_key_values.layers[0].keys.shape[-2]
    assert kept == {"dynamic": WINDOW - 1, "static": WINDOW}[cache] < ids.shape[1]  # the sliding layer dropped keys
    gswa_plugin.disable(model)
    pos_w = placeholder_position_weights(ids, model.config.image_token_id, view_w, 4)
    model.model.language_model.config._attn_implementation = REF  # the language model only
    with _Reference() as ref, torch.no_grad():
        for t in range(steps):
            seq = out.sequences[:, : ids.shape[1] + t]
            ref.log_w = torch.log(torch.cat([pos_w, torch.ones(1, t)], dim=1))
            logits = model(
                input_ids=seq, pixel_values=one_prompt["pixel_values"], attention_mask=torch.ones_like(seq),
                use_cache=False,
            ).logits[:, -1]
            torch.testing.assert_close(out.logits[t], logits, rtol=1e-4, atol=1e-5, msg=f"step {t}")
