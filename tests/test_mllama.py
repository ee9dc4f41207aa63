"""Llama 3.2 Vision (mllama), a cross-attention host: the adapter contract measured on what the
language model receives (``cross_attention_states``), not on ``inputs_embeds`` (mllama puts no
image tokens in the prompt). Tiny MllamaForConditionalGeneration + real MllamaProcessor (PIL)
on two photographs cut into 4 and 3 tiles (no thumbnail: ``global_position: none``)."""

from __future__ import annotations

import copy

import pytest
import torch

import gswa_plugin
from gswa_plugin.testing.contract import PEAKED, SMALL
from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import mllama_inputs, tiny_mllama

TILES = [4, 3]


@pytest.fixture(scope="module")
def inputs() -> dict:
    images = [sample_image("astronaut"), sample_image("coffee").resize((300, 100))]
    return mllama_inputs(images, ["<|image|> describe the image", "<|image|> what is in the picture ?"])


def _run(model, inputs) -> tuple[torch.Tensor, dict]:
    """Logits, and what the language model and its cross-attention layer received."""
    seen: dict = {}
    lm = model.model.language_model
    layer = lm.layers[1].cross_attn

    def pre(module, args, kwargs):
        seen["states"] = kwargs["cross_attention_states"].detach().clone()

    hooks = [
        lm.register_forward_pre_hook(pre, with_kwargs=True),
        layer.k_norm.register_forward_hook(lambda m, a, o: seen.__setitem__("keys", o.detach().clone())),
        layer.v_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("values", o.detach().clone())),
    ]
    try:
        with torch.no_grad():
            logits = model(**copy.deepcopy(inputs)).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


def test_identity_at_initialisation_in_forward_and_generate(inputs):
    model = tiny_mllama()
    base, seen0 = _run(model, inputs)
    gen = dict(max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
    g0 = model.generate(**copy.deepcopy(inputs), **gen)
    gswa_plugin.enable(model, {"adapter": "mllama", **SMALL})
    logits, seen1 = _run(model, inputs)
    assert torch.equal(logits, base) and torch.equal(seen1["states"], seen0["states"])
    assert [w.tolist() for w in gswa_plugin.last_weights(model)] == [[1.0] * 4, [1.0] * 3]
    g1 = model.generate(**copy.deepcopy(inputs), **gen)
    assert torch.equal(g0.sequences, g1.sequences)
    assert all(torch.equal(a, b) for a, b in zip(g0.scores, g1.scores))
    gswa_plugin.disable(model)
    assert torch.equal(_run(model, inputs)[0], base)


def test_each_tile_cross_attention_states_are_exactly_w_times_and_the_values_carry_it(inputs):
    model = tiny_mllama()
    # Random init gives keys of RMS ~1e-3, below the norm's sqrt(eps) ~3e-3, where RMSNorm does
    # not normalise; a trained model's keys are O(1). Bring them there so k_norm acts as it does.
    with torch.no_grad():
        model.model.language_model.layers[1].cross_attn.k_proj.weight.mul_(100.0)
    base, seen0 = _run(model, inputs)
    handle = gswa_plugin.enable(model, {"adapter": "mllama", **PEAKED})
    logits, seen1 = _run(model, inputs)
    batch = handle.last_batch
    assert batch.layout.views_per_image == tuple(TILES) and batch.layout.global_position == "none"
    w = batch.weights
    assert not torch.allclose(w, torch.ones_like(w))
    for ws in gswa_plugin.last_weights(model):
        assert abs(float(ws.mean()) - 1) < 1e-5
    # per tile (sample, image, tile) in row-major order; the padding tile of image 2 keeps weight 1
    real = inputs["aspect_ratio_mask"].bool().flatten()
    scale = torch.ones(real.numel())
    scale[real] = w
    states0 = seen0["states"]  # [tiles of the batch, patches, dim]
    assert torch.equal(seen1["states"], states0 * scale[:, None, None])
    # In the cross-attention layer the keys are RMS-normalised per head (k_norm): the scalar is
    # divided out there; the values are a bias-free linear map of the states: exactly w x.
    tiles, patches = states0.shape[:2]
    v0 = seen0["values"].reshape(1, tiles, patches, -1)
    v1 = seen1["values"].reshape(1, tiles, patches, -1)
    torch.testing.assert_close(v1, v0 * scale[None, :, None, None], rtol=1e-5, atol=1e-6)
    # keys: unchanged up to the norm's eps (measured: at most 2e-4 relative, where w moves values by 10-90%)
    torch.testing.assert_close(seen1["keys"], seen0["keys"], rtol=1e-3, atol=1e-3)
    assert float((w - 1).abs().max()) > 0.1
    assert not torch.allclose(logits, base)  # the weights reach the logits


def test_a_forward_without_the_projector_call_fails_loudly(inputs):
    model = tiny_mllama()
    gswa_plugin.enable(model, {"adapter": "mllama", **SMALL})
    inner = model.model
    states = inner.multi_modal_projector(
        inner.vision_model(
            pixel_values=inputs["pixel_values"],
            aspect_ratio_ids=inputs["aspect_ratio_ids"],
            aspect_ratio_mask=inputs["aspect_ratio_mask"],
        ).last_hidden_state
    )
    assert gswa_plugin.get_handle(model).last_batch.layout.views_per_image[:2] == (4, 4)  # no mask: all tiles
    del states
    # A host whose forward never reaches the hooked projector (another code path) is not a silent no-op.
    old = inner.multi_modal_projector
    inner.multi_modal_projector = torch.nn.Linear(old.in_features, old.out_features)  # without GSWA's hook
    with pytest.raises(gswa_plugin.errors.SeamNotRunError, match="'mllama' adapter's seam never ran"):
        model(**copy.deepcopy(inputs))


def test_gswa_influence_measures_a_non_zero_effect_on_the_next_token():
    # measure_influence is what `gswa influence` runs: uniform vs one tile 10x heavier (mean 1).
    from gswa_plugin.tools.influence import measure_influence

    model = tiny_mllama()
    gswa_plugin.enable(model, {"adapter": "mllama", **SMALL})
    one = mllama_inputs([sample_image("astronaut")], ["<|image|> describe the image"])  # 4 tiles
    result = measure_influence(model, one, peak_tile=0, ratio=10.0)
    # measured (seed 0): kl 1.3e-5, max logit change 0.012 against a logit scale of 0.17
    assert result.kl > 1e-7 and result.max_logit_change > 1e-3


def test_generate_hands_the_weighted_states_to_the_language_model(inputs):
    model = tiny_mllama()
    _, seen0 = _run(model, inputs)
    handle = gswa_plugin.enable(model, {"adapter": "mllama", **PEAKED})
    got = []

    def pre(module, args, kwargs):
        if kwargs.get("cross_attention_states") is not None:
            got.append(kwargs["cross_attention_states"].detach().clone())

    h = model.model.language_model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        model.generate(**copy.deepcopy(inputs), max_new_tokens=2, do_sample=False)
    finally:
        h.remove()
    real = inputs["aspect_ratio_mask"].bool().flatten()
    scale = torch.ones(real.numel())
    scale[real] = handle.last_batch.weights
    assert len(got) == 1 and torch.equal(got[0], seen0["states"] * scale[:, None, None])
