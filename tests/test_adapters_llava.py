"""LLaVA-NeXT and LLaVA-OneVision adapters against their real processors and real photographs.

The contract test (tests/test_contract.py) covers identity, exact scaling, gradients, disable and
save/load; here: the processor's tiling versus the adapter's layout, where the summaries come
from, OneVision's multi-image samples and ``anyres_max`` shrinking, and the errors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gswa_plugin
from gswa_plugin import plugins
from gswa_plugin.apply import current_position_weights
from gswa_plugin.errors import AdapterNotFoundError, ConfigError, LayoutError, MissingModuleError
from gswa_plugin.hookspecs import hookimpl
from gswa_plugin.testing.contract import view_of_position
from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_hosts import (
    tiny_llava_next,
    tiny_llava_next_processor,
    tiny_llava_onevision,
    tiny_llava_onevision_processor,
)

from .conftest import lm_inputs_embeds
from .host_cases.llava_next import CASE as NEXT_CASE
from .host_cases.llava_next import anyres_inputs
from .host_cases.llava_onevision import CASE as ONEVISION_CASE

HOST_CASES = {"llava_next": NEXT_CASE, "llava_onevision": ONEVISION_CASE}

SMALL = {"hidden_size": 32, "num_heads": 4}
PEAKED = {**SMALL, "identity_init": False, "temperature": 0.1}

FAMILIES = {
    "llava_next": (tiny_llava_next, tiny_llava_next_processor),
    "llava_onevision": (tiny_llava_onevision, tiny_llava_onevision_processor),
}


class Seen:
    """Keeps the batch that reached ``gswa_process_tiles`` (summaries, features before and after)."""

    def __init__(self) -> None:
        self.summaries: torch.Tensor | None = None
        self.before: torch.Tensor | None = None
        self.after: torch.Tensor | None = None
        self.extra: dict = {}

    @hookimpl(wrapper=True)
    def gswa_process_tiles(self, batch, handle):
        self.summaries = batch.summaries.detach().clone()
        self.before = batch.features.detach().clone()
        self.extra = dict(batch.extra)
        result = yield
        self.after = result.features.detach().clone()
        return result


@pytest.fixture
def seen():
    s = Seen()
    plugins.register_plugin(s, name="seen")
    return s


def _photos():
    return [sample_image("astronaut"), sample_image("coffee").resize((300, 100)), sample_image("chelsea")]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_layout_matches_the_processors_tiling_of_real_photographs(family, seen):
    make_model, make_processor = FAMILIES[family]
    proc = make_processor()
    photos = _photos()
    # What the real processor produced for each photograph on its own (no batch padding).
    views = [int(proc.image_processor(images=[p], return_tensors="pt")["pixel_values"].shape[1]) for p in photos]
    assert len(set(views)) > 1, "the photographs should give different tile counts"
    inputs = proc(text=["<image> describe"] * 3, images=photos, return_tensors="pt", padding=True)
    model = make_model()
    handle = gswa_plugin.enable(model, SMALL)
    with torch.no_grad():
        model(**inputs)
    layout = handle.last_batch.layout
    assert list(layout.views_per_image) == views
    assert layout.global_position == "first"
    starts = [sum(views[:i]) for i in range(len(views))]
    assert layout.global_indices() == starts  # the base (whole resized) image of each photograph
    # The flat views at the seam are the processor's views, in order, base first.
    flat = torch.cat([inputs["pixel_values"][i, :n] for i, n in enumerate(views)])
    assert torch.equal(seen.extra["pixel_values"], flat)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_summaries_come_from_the_selected_vision_layer(family, seen):
    make_model, make_processor = FAMILIES[family]
    proc = make_processor()
    inputs = proc(text=["<image> describe"], images=[sample_image("astronaut")], return_tensors="pt")
    model = make_model()
    gswa_plugin.enable(model, SMALL)
    with torch.no_grad():
        model(**inputs)
        pv = inputs["pixel_values"][0]
        hidden = model.model.vision_tower(pv, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
    if family == "llava_next":  # CLIP: the CLS token of layer -2, which the host drops
        expected = hidden[:, 0]
    else:  # SigLIP has no CLS: mean of the view's tokens
        expected = hidden.mean(dim=1)
    torch.testing.assert_close(seen.summaries, expected, rtol=0, atol=1e-6)


def test_llava_next_mean_summary_excludes_cls(seen):
    proc = tiny_llava_next_processor()
    inputs = proc(text=["<image> describe"], images=[sample_image("coffee")], return_tensors="pt")
    model = tiny_llava_next()
    gswa_plugin.enable(model, {**SMALL, "summary": "mean"})
    with torch.no_grad():
        model(**inputs)
        hidden = model.model.vision_tower(inputs["pixel_values"][0], output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(seen.summaries, hidden[:, 1:].mean(dim=1), rtol=0, atol=1e-6)


def test_onevision_multi_image_samples_carry_no_tiles():
    proc = tiny_llava_onevision_processor()
    a, b, c = _photos()
    inputs = proc(
        text=["<image> <image> describe", "<image> describe"], images=[[a, b], [c]], return_tensors="pt", padding=True
    )
    model = tiny_llava_onevision()
    base = lm_inputs_embeds(model, **inputs)
    handle = gswa_plugin.enable(model, PEAKED)
    got = lm_inputs_embeds(model, **inputs)
    layout = handle.last_batch.layout
    assert layout.views_per_image[:2] == (1, 1)  # the two images of the first sample: one view each
    assert layout.views_per_image[2] > 1  # the single image of the second sample is tiled
    weights = gswa_plugin.last_weights(model)
    assert torch.equal(weights[0], torch.ones(1)) and torch.equal(weights[1], torch.ones(1))
    assert not torch.allclose(weights[2], torch.ones_like(weights[2]))
    assert torch.equal(got[0], base[0])  # the multi-image sample is left unchanged
    assert not torch.equal(got[1], base[1])


def test_onevision_weights_act_before_anyres_max_shrinking(seen):
    # anyres_max_1: any grid of more than one tile is shrunk (bilinear) after unpadding.
    proc = tiny_llava_onevision_processor(vision_aspect_ratio="anyres_max_1")
    model = tiny_llava_onevision(vision_aspect_ratio="anyres_max_1")
    inputs = proc(text=["<image> describe"], images=[sample_image("astronaut")], return_tensors="pt")
    base = lm_inputs_embeds(model, **inputs)
    handle = gswa_plugin.enable(model, PEAKED)
    got = lm_inputs_embeds(model, **inputs)
    w = handle.last_batch.weights
    assert not torch.allclose(w, torch.ones_like(w))
    torch.testing.assert_close(seen.after, seen.before * w[:, None, None], rtol=0, atol=0)
    # What the host's own (unpatched) packing makes of the weighted views is what the LM gets.
    inner = model.model
    packed, _ = type(inner).pack_image_features(
        inner, (seen.after,), inputs["image_sizes"], image_newline=inner.image_newline, vision_aspect_ratio="anyres_max_1"
    )
    image_pos = inputs["input_ids"] == model.config.image_token_id
    side = 2 * model.config.vision_config.image_size // 14  # 2x2 tiles of 4x4 tokens, unshrunk
    unshrunk = side * side + side + side * side // 4  # grid + newlines + base view
    assert packed[0].shape[0] < unshrunk, "the grid should have been shrunk"
    assert torch.equal(got[image_pos], packed[0])
    assert not torch.equal(got[image_pos], base[image_pos])


def test_onevision_videos_pass_the_shared_vision_tower_untouched():
    model = tiny_llava_onevision()
    videos = torch.randn(1, 2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model.model.get_video_features(pixel_values_videos=videos).pooler_output
    handle = gswa_plugin.enable(model, PEAKED)
    with torch.no_grad():
        got = model.model.get_video_features(pixel_values_videos=videos).pooler_output
    assert torch.equal(got, base)
    assert handle.last_batch is None and not handle.state  # no capture left behind for a later image call


def test_explicit_vision_feature_layer_is_followed(seen):
    proc = tiny_llava_next_processor()
    inputs = proc(text=["<image> describe"], images=[sample_image("coffee")], return_tensors="pt")
    model = tiny_llava_next()
    gswa_plugin.enable(model, SMALL)
    with torch.no_grad():
        model(**inputs, vision_feature_layer=-1)
        hidden = model.model.vision_tower(inputs["pixel_values"][0], output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(seen.summaries, hidden[:, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_missing_module_is_named(family):
    model = FAMILIES[family][0]()
    del model.model.multi_modal_projector
    with pytest.raises(MissingModuleError, match=rf"lacks `model.multi_modal_projector`.*'{family}' adapter"):
        gswa_plugin.enable(model)
    assert not hasattr(model, "gswa")


def test_onevision_refuses_cls_summary():
    with pytest.raises(ConfigError, match="no CLS token; use `summary: mean`"):
        gswa_plugin.enable(tiny_llava_onevision(), {**SMALL, "summary": "cls"})


def test_unmatched_model_lists_these_adapters_and_how_to_declare_one():
    with pytest.raises(AdapterNotFoundError) as err:
        gswa_plugin.enable(nn.Linear(2, 2))
    msg = str(err.value)
    assert "llava_next" in msg and "llava_onevision" in msg
    assert "declaratively" in msg and "gswa_register_adapters" in msg


def test_pack_image_features_alone_is_a_clear_error():
    model = tiny_llava_next()
    gswa_plugin.enable(model, SMALL)
    feats = (torch.zeros(1, 16, model.config.text_config.hidden_size),)
    with pytest.raises(LayoutError, match="`pack_image_features` was called on its own"):
        model.model.pack_image_features(feats, torch.tensor([[56, 56]]), "default")


# --- application modes (value, attn_bias) -----------------------------------------------------
@pytest.mark.parametrize("mode", ["value", "attn_bias"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_modes_are_identity_at_initialisation(family, mode):
    make_model, make_processor = FAMILIES[family]
    model, inputs = make_model(), anyres_inputs(make_processor)
    with torch.no_grad():
        base = model(**inputs).logits
        gen0 = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    gswa_plugin.enable(model, {**SMALL, "mode": mode})
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, base)
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), gen0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_value_mode_weights_every_packed_token_of_a_tile(family):
    case = HOST_CASES[family]
    model, inputs = case.make_model(), case.make_inputs()
    handle = gswa_plugin.enable(model, {**PEAKED, "mode": "value"})
    where = view_of_position(case, model, inputs)
    out = model(**inputs, labels=inputs["input_ids"].clone())
    pos_w = current_position_weights(handle)
    w = handle.last_batch.weights
    assert not torch.allclose(w, torch.ones_like(w))
    for v in range(w.shape[0]):  # every surviving token of view v carries w_v; the thumbnail's are 1
        assert torch.equal(pos_w[where == v], w[v].float().expand(int((where == v).sum())))
    assert bool((pos_w[where < 0] == 1).all())  # text and newline tokens
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gswa.parameters())


def test_value_mode_follows_onevision_shrinking():
    proc = tiny_llava_onevision_processor(vision_aspect_ratio="anyres_max_1")
    model = tiny_llava_onevision(vision_aspect_ratio="anyres_max_1")
    inputs = proc(text=["<image> describe"], images=[sample_image("astronaut")], return_tensors="pt")
    handle = gswa_plugin.enable(model, {**PEAKED, "mode": "value"})
    with torch.no_grad():
        model(**inputs)
    pos_w = current_position_weights(handle)[inputs["input_ids"] == model.config.image_token_id]
    tiles = handle.last_batch.weights[1:]
    base_tokens = (model.config.vision_config.image_size // 14) ** 2
    assert bool((pos_w[:base_tokens] == 1).all())  # base view first
    grid = pos_w[base_tokens:]
    unshrunk = 4 * base_tokens + 2 * int(base_tokens**0.5)  # 2x2 tiles + a newline per row
    assert grid.shape[0] < unshrunk
    # the shrunk grid interpolates the tiles' weights (newlines keep 1), and every tile is still there
    assert bool((grid >= min(tiles.min(), 1) - 1e-6).all() and (grid <= max(tiles.max(), 1) + 1e-6).all())
    assert all(bool(torch.isclose(grid, t).any()) for t in tiles.float())
