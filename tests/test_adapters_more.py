"""Idefics3, SmolVLM, Aya Vision, InternVL2 remote code (stand-in) and the declarative adapter.

Per family: the real image processor tiles real photographs and the adapter's layout agrees
with it (views per image, and which view is the whole image, found from the pixels). Then what
each adapter needs beyond the contract test: InternVL2's ``chat``/``batch_chat``/``image_flags``
paths, Idefics3's single-view images, and the declarative adapter's validation, its refusal to
auto-match, its YAML file and its ``before_projector`` mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gswa_plugin
from gswa_plugin.adapters.declarative import parse_declaration, validate_declaration
from gswa_plugin.errors import AdapterNotFoundError, ConfigError, LayoutError, MissingModuleError
from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import (
    got_ocr2_inputs,
    internvl_chat_tiles,
    internvl_chat_tokenizer,
    tiny_aya_vision,
    tiny_aya_vision_processor,
    tiny_got_ocr2,
    tiny_idefics3,
    tiny_idefics3_processor,
    tiny_internvl_chat,
)

from .host_cases.declarative import YAML_PATH, gswa_block

PHOTOS = ("astronaut", "coffee", "chelsea")


def photo(name: str) -> "object":
    img = sample_image(name)
    return img.resize((300, 100)) if name == "coffee" else img


def whole_image_view(views: torch.Tensor, photo_img, masks: torch.Tensor | None = None) -> int:
    """Index of the view that shows the whole photograph: each view (cropped to its valid
    pixels) and the photograph are reduced to 16x16 grey images and compared by correlation."""
    grey = np.asarray(photo_img.convert("L"), dtype=np.float32)
    ref = F.interpolate(torch.from_numpy(grey)[None, None], size=(16, 16), mode="area").flatten()
    ref = (ref - ref.mean()) / ref.std()
    scores = []
    for i, v in enumerate(views):
        g = v.float().mean(0)
        if masks is not None:
            rows, cols = masks[i].nonzero(as_tuple=True)
            g = g[: int(rows.max()) + 1, : int(cols.max()) + 1]
        s = F.interpolate(g[None, None], size=(16, 16), mode="area").flatten()
        s = (s - s.mean()) / s.std().clamp_min(1e-6)
        scores.append(float((s * ref).mean()))
    return int(np.argmax(scores))


def layout_after_forward(model, inputs, config=None):
    handle = gswa_plugin.enable(model, config or {"variant": "cosine"})
    with torch.no_grad():
        model(**inputs)
    return handle.last_batch.layout


def lm_inputs_embeds(lm, run) -> torch.Tensor:
    seen = {}
    def hook(module, args, kwargs):
        if "e" not in seen and kwargs.get("inputs_embeds") is not None:  # generate(): the prompt's call
            seen["e"] = kwargs["inputs_embeds"].detach().clone()

    h = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            run()
    finally:
        h.remove()
    return seen["e"]


# --- real processors on real photographs: the adapter's layout matches ------------------------
@pytest.mark.parametrize("family", ["idefics3", "smolvlm"])
def test_idefics3_layout_matches_processor(family):
    proc = tiny_idefics3_processor(family)
    images = [photo(n) for n in PHOTOS]
    info = proc.image_processor([[im] for im in images], return_row_col_info=True, return_tensors="pt")
    expected = [r * c + 1 for r, c in zip((r for rs in info["rows"] for r in rs), (c for cs in info["cols"] for c in cs))]
    inputs = proc(
        text=[f"<image> describe the {n}" for n in ("image", "cup", "cat")],
        images=[[im] for im in images],
        return_tensors="pt",
        padding=True,
    )
    layout = layout_after_forward(tiny_idefics3(family), inputs)
    assert list(layout.views_per_image) == expected and len(set(expected)) > 1
    # the view the adapter treats as global is the one that shows the whole photograph
    for i, (n_views, g) in enumerate(zip(expected, layout.global_indices())):
        views = inputs["pixel_values"][i, :n_views]
        masks = inputs["pixel_attention_mask"][i, :n_views]
        start = sum(expected[:i])
        assert whole_image_view(views, images[i], masks) == g - start == n_views - 1


def test_idefics3_unsplit_images_are_single_views_of_weight_one():
    proc = tiny_idefics3_processor()
    inputs = proc(
        text=["<image> what is this", "<image> describe the image"],
        images=[[photo("chelsea")], [photo("astronaut")]],
        do_image_splitting=False,
        return_tensors="pt",
        padding=True,
    )
    model = tiny_idefics3()
    layout = layout_after_forward(model, inputs)
    assert layout.views_per_image == (1, 1) and layout.global_indices() == [None, None]
    assert [w.tolist() for w in gswa_plugin.last_weights(model)] == [[1.0], [1.0]]


def _got_style_check(pixel_values, num_patches, images, layout):
    assert list(layout.views_per_image) == num_patches and len(set(num_patches)) > 1
    starts = np.cumsum([0] + num_patches[:-1])
    for im, n, s, g in zip(images, num_patches, starts, layout.global_indices()):
        assert g == s + n - 1
        assert whole_image_view(pixel_values[s : s + n], im) == n - 1


def test_aya_vision_layout_matches_processor():
    proc = tiny_aya_vision_processor(max_patches=6)
    images = [photo(n) for n in PHOTOS]
    inputs = proc(text=["<image> describe the image"] * 3, images=images, return_tensors="pt", padding=True)
    num_patches = proc.image_processor(images, crop_to_patches=True, max_patches=6)["num_patches"]
    layout = layout_after_forward(tiny_aya_vision(), inputs)
    _got_style_check(inputs["pixel_values"], [int(n) for n in num_patches], images, layout)


def test_internvl_chat_layout_matches_dynamic_preprocess_tiling():
    model, tok = tiny_internvl_chat(), internvl_chat_tokenizer()
    images = [photo(n) for n in PHOTOS]
    pixel_values, num_patches = internvl_chat_tiles(images)
    handle = gswa_plugin.enable(model, {"variant": "cosine"})
    model.batch_chat(tok, pixel_values, ["describe the image"] * 3, {"max_new_tokens": 1, "do_sample": False}, num_patches_list=num_patches)
    _got_style_check(pixel_values, num_patches, images, handle.last_batch.layout)


def test_declarative_got_ocr2_layout_matches_processor():
    images = [sample_image("page"), photo("coffee"), photo("astronaut")]
    inputs = got_ocr2_inputs(images)
    from gswa_plugin.testing.tiny_more import tiny_got_ocr2_processor

    num_patches = tiny_got_ocr2_processor().image_processor(images, crop_to_patches=True, max_patches=6)["num_patches"]
    layout = layout_after_forward(tiny_got_ocr2(), inputs, {**gswa_block(), "variant": "cosine"})
    _got_style_check(inputs["pixel_values"], [int(n) for n in num_patches], images, layout)


# --- InternVL2 remote code: the chat paths and image_flags ------------------------------------
def lm_view_of_chat(model, run) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs_embeds, input_ids)`` of the prompt the language model receives in ``run()``:
    the ids are those the model embeds first (the prompt, before the image splice)."""
    ids = {}
    emb = model.language_model.get_input_embeddings()
    def hook(module, args, output):
        if "ids" not in ids:
            ids["ids"] = args[0].detach().clone()

    h = emb.register_forward_hook(hook)
    try:
        embeds = lm_inputs_embeds(model.language_model, run)
    finally:
        h.remove()
    return embeds, ids["ids"]


@pytest.mark.parametrize("method", ["chat", "batch_chat"])
def test_internvl_chat_language_model_receives_w_times_each_tile(method):
    model, tok = tiny_internvl_chat(), internvl_chat_tokenizer()
    images = [photo("astronaut")] if method == "chat" else [photo("astronaut"), photo("coffee")]
    pixel_values, num_patches = internvl_chat_tiles(images)
    gen = {"max_new_tokens": 2, "do_sample": False}

    def run():
        if method == "chat":
            model.chat(tok, pixel_values, "describe the image", gen, num_patches_list=num_patches)
        else:
            model.batch_chat(tok, pixel_values, ["describe the image", "what is this"], gen, num_patches_list=num_patches)

    base, ids = lm_view_of_chat(model, run)
    handle = gswa_plugin.enable(model, {"variant": "cosine", "cosine_temperature": 0.05})
    got, ids_after = lm_view_of_chat(model, run)
    assert torch.equal(ids, ids_after)
    w = handle.last_batch.weights
    assert list(handle.last_batch.layout.views_per_image) == num_patches
    assert not torch.allclose(w, torch.ones_like(w))
    # the k-th image-context token holds a token of tile k // num_image_token
    ctx = ids == model.img_context_token_id
    expected = base.clone()
    expected[ctx] = base[ctx] * w.repeat_interleave(model.num_image_token).to(base.dtype)[:, None]
    assert torch.equal(got, expected)
    for g in handle.last_batch.layout.global_indices():
        assert w[g] == 1.0


def test_internvl_chat_forward_leaves_out_dummy_tiles_of_text_only_samples():
    """InternVL's fine-tuning batches give a text-only sample one dummy tile with image_flags 0;
    forward() encodes it and drops it. GSWA weighs only the real tiles."""
    from gswa_plugin.testing.tiny_more import internvl_chat_inputs

    model = tiny_internvl_chat()
    inputs = internvl_chat_inputs([photo("astronaut"), photo("coffee")], ["<image> describe the image", "<image> what is this"], model)
    tok = internvl_chat_tokenizer()
    text_only = tok(["what is in the picture ?"], return_tensors="pt")["input_ids"]
    width = inputs["input_ids"].shape[1]
    text_only = F.pad(text_only, (0, width - text_only.shape[1]), value=0)
    batch = {
        "pixel_values": torch.cat([inputs["pixel_values"][:5], torch.zeros(1, 3, 56, 56), inputs["pixel_values"][5:]]),
        "input_ids": torch.cat([inputs["input_ids"][:1], text_only, inputs["input_ids"][1:]]),
        "attention_mask": torch.cat([inputs["attention_mask"][:1], (text_only != 0).long(), inputs["attention_mask"][1:]]),
        "image_flags": torch.tensor([1] * 5 + [0] + [1] * 4)[:, None],
    }
    handle = gswa_plugin.enable(model, {"variant": "cosine"})
    with torch.no_grad():
        model(**batch)
    assert list(handle.last_batch.layout.views_per_image) == [5, 4]
    assert handle.last_batch.features.shape[0] == 9


def test_internvl_chat_select_layer_reads_that_layers_cls():
    model = tiny_internvl_chat(select_layer=-2)
    pixel_values, num_patches = internvl_chat_tiles([photo("astronaut")])
    seen = {}
    def hook(module, args, output):
        seen["hs"] = output.hidden_states

    h = model.vision_model.register_forward_hook(hook)
    handle = gswa_plugin.enable(model, {"variant": "cosine", "summary": "cls"})
    with gswa_plugin.tiles(model, num_patches), torch.no_grad():
        model.extract_feature(pixel_values)
    h.remove()
    assert torch.equal(handle.last_batch.summaries, seen["hs"][-2][:, 0])


def test_internvl_chat_without_counts_says_how_to_give_them():
    model = tiny_internvl_chat()
    pixel_values, _ = internvl_chat_tiles([photo("astronaut")])
    gswa_plugin.enable(model, {"variant": "cosine"})  # not the identity: the grouping matters
    with pytest.raises(LayoutError, match=r"gswa_plugin\.tiles\(model"), torch.no_grad():
        model.extract_feature(pixel_values)


# --- the declarative adapter ------------------------------------------------------------------
def test_declarative_yaml_file_alone_enables_gswa():
    model = tiny_got_ocr2()
    handle = gswa_plugin.enable(model, YAML_PATH)
    assert handle.adapter.name == "declarative" and handle.config.variant == "cosine"
    with torch.no_grad():
        model(**got_ocr2_inputs([sample_image("page"), photo("coffee")]))
    assert [w.shape[0] for w in gswa_plugin.last_weights(model)] == [2, 3]


def test_declarative_docs_example_runs():
    import runpy

    ns = runpy.run_path(str(YAML_PATH.with_suffix(".py")))
    assert [w.shape[0] for w in gswa_plugin.last_weights(ns["model"])] == [2]


def test_declarative_never_matches_by_itself():
    with pytest.raises(AdapterNotFoundError, match="got_ocr2"):
        gswa_plugin.enable(tiny_got_ocr2())


def test_declaration_problems_are_reported_all_at_once():
    bad = {
        "match": {"model_typ": "x"},
        "seam": "model.get image features",
        "global_view": "middle",
        "summary": {"from": "module", "token": "first", "channels": "sideways"},
        "apply": "before_projector",
        "tiles_from": {"group": "columns", "tokens_per_view": 0},
        "extra": 1,
    }
    problems = validate_declaration(bad)
    for needle in (
        "unknown key `declare.extra`",
        "unknown key `declare.match.model_typ`; did you mean `model_type`?",
        "declare.match` needs `model_type`",
        "declare.seam",
        "declare.global_view",
        "declare.summary.module",
        "declare.summary.token",
        "declare.summary.channels",
        "declare.projector",
        "declare.tiles_from.group",
        "declare.tiles_from.tokens_per_view",
    ):
        assert any(needle in p for p in problems), (needle, problems)
    with pytest.raises(ConfigError) as err:
        gswa_plugin.GSWAConfig.from_dict({"adapter": "declarative", "declare": bad})
    assert len(err.value.problems) == len(problems)


@pytest.mark.parametrize(
    "block, message",
    [
        ({"adapter": "declarative"}, "needs a `declare:` mapping"),
        ({"declare": {"match": {"model_type": "x"}, "seam": "f", "global_view": "last"}}, "add `adapter: declarative`"),
        ({"adapter": "declarative", "declare": "seam: f"}, "`declare` must be a mapping or null, got str"),
    ],
)
def test_declare_and_adapter_go_together(block, message):
    with pytest.raises(ConfigError, match=message):
        gswa_plugin.GSWAConfig.from_dict(block)


def test_declaration_that_does_not_fit_the_model_is_refused_before_patching():
    model = tiny_got_ocr2()
    wrong_family = {**gswa_block(), "declare": {**gswa_block()["declare"], "match": {"model_type": "gemma3"}}}
    with pytest.raises(AdapterNotFoundError, match="gemma3"):
        gswa_plugin.enable(model, wrong_family)
    wrong_path = {**gswa_block(), "declare": {**gswa_block()["declare"], "seam": "model.encode_images"}}
    with pytest.raises(MissingModuleError, match="model.encode_images"):
        gswa_plugin.enable(model, wrong_path)
    assert not gswa_plugin.is_enabled(model) and not hasattr(model, "gswa")


IDEFICS3_DECLARE = {
    "match": {"class": "Idefics3ForConditionalGeneration"},
    "seam": "model.get_image_features",
    "global_view": "last",
    "summary": {"from": "module", "module": "model.vision_model", "token": "mean"},
    "tiles_from": {"group": "global_marker", "token": "image_token_id", "tokens_per_view": 4},
}


def _idefics3_declared(declare: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, object]:
    """(LM embeddings without GSWA, with the declared GSWA, image-token mask, handle)."""
    model = tiny_idefics3()
    inputs = tiny_idefics3_processor()(
        text=["<image> describe the image", "<image> what is this"],
        images=[[photo("astronaut")], [photo("coffee")]],
        return_tensors="pt",
        padding=True,
    )
    lm = model.model.text_model
    base = lm_inputs_embeds(lm, lambda: model(**inputs))
    handle = gswa_plugin.enable(model, {"adapter": "declarative", "declare": declare, "variant": "cosine"})
    got = lm_inputs_embeds(lm, lambda: model(**inputs))
    assert list(handle.last_batch.layout.views_per_image) == [10, 4]
    return base, got, inputs["input_ids"] == model.config.image_token_id, handle


def test_declarative_flat_per_sample_features_after_the_projector():
    """Idefics3's pooler_output is one flat [views * tokens, dim] block per sample."""
    base, got, image, handle = _idefics3_declared(IDEFICS3_DECLARE)
    w = handle.last_batch.weights
    assert not torch.allclose(w, torch.ones_like(w))
    expected = base.clone()
    expected[image] = base[image] * w.repeat_interleave(4)[:, None]
    assert torch.equal(got, expected)


def test_declarative_flat_features_need_tokens_per_view():
    declare = {**IDEFICS3_DECLARE, "tiles_from": {"group": "global_marker", "token": "image_token_id"}}
    with pytest.raises(LayoutError, match="tokens_per_view"):
        _idefics3_declared(declare)


def test_declarative_before_projector_on_a_norm_free_connector():
    """Idefics3's connector is pixel shuffle + a bias-free Linear, so a per-view scalar before
    it comes out unchanged: the LM receives w times each view's (unweighted) tokens."""
    declare = {**IDEFICS3_DECLARE, "apply": "before_projector", "projector": "model.connector"}
    parse_declaration(declare)
    base, got, image, handle = _idefics3_declared(declare)
    w = handle.last_batch.weights
    assert not torch.allclose(w, torch.ones_like(w))
    expected = base.clone()
    expected[image] = base[image] * w.repeat_interleave(4)[:, None]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # Linear(w x) = w Linear(x) up to rounding
    assert torch.equal(got[~image], base[~image])


# --- application modes on these hosts ---------------------------------------------------------
def _mode_host(name: str):
    import importlib

    case = importlib.import_module(f"tests.host_cases.{name}").CASE
    model, inputs = case.make_model(), case.make_inputs()
    lm = case.language_model(model)
    layers = getattr(lm, "layers", None) or lm.model.layers
    token = getattr(model, "img_context_token_id", None) or model.config.image_token_id
    return model, inputs, layers[0].self_attn.v_proj, inputs["input_ids"] == token


def _values(model, inputs, v_proj) -> tuple[torch.Tensor, torch.Tensor]:
    seen = {}

    def hook(module, args, output):
        seen["v"] = output.detach().clone()

    h = v_proj.register_forward_hook(hook)  # registered last: sees the mode's scaling
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
    finally:
        h.remove()
    return seen["v"], logits


@pytest.mark.parametrize("name", ["idefics3", "aya_vision", "internvl_chat"])
def test_value_mode_scales_each_views_values_by_its_weight(name):
    model, inputs, v_proj, image = _mode_host(name)
    v0, logits0 = _values(model, inputs, v_proj)
    gswa_plugin.enable(model, {"mode": "value"})
    assert torch.equal(_values(model, inputs, v_proj)[1], logits0)  # untrained: the identity
    gswa_plugin.disable(model)
    handle = gswa_plugin.enable(model, {"mode": "value", "variant": "cosine", "cosine_temperature": 0.05})
    v1, _ = _values(model, inputs, v_proj)
    w = handle.last_batch.weights
    assert not torch.allclose(w, torch.ones_like(w))
    expected = v0.clone()
    expected[image] = v0[image] * w.repeat_interleave(handle.last_batch.features.shape[1])[:, None]
    assert torch.equal(v1, expected)


@pytest.mark.parametrize("make", [tiny_aya_vision, tiny_idefics3], ids=["aya_vision", "idefics3"])
def test_cls_summary_is_refused_where_the_encoder_has_none(make):
    model = make()
    with pytest.raises(ConfigError, match="no CLS token"):
        gswa_plugin.enable(model, {"summary": "cls"})
    assert not gswa_plugin.is_enabled(model)


def test_internvl_paper_placement_scales_the_projector_input_and_the_layernorm_cancels_it():
    """recipes/internvl2-2b/gswa-paper-placement.yaml: GSWA's weights act where the paper's component
    map puts them (after pixel shuffle, before the projector). The projector receives each view's
    features times its weight, and its opening LayerNorm divides that out: the language model gets
    (nearly) the unweighted embeddings, while the same weights after the projector reach it in full."""
    from pathlib import Path

    from gswa_plugin.testing.tiny import tiny_internvl, tiny_internvl_processor

    path = Path(__file__).resolve().parents[1] / "recipes" / "internvl2-2b" / "gswa-paper-placement.yaml"
    cfg = gswa_plugin.GSWAConfig.from_yaml(path).replace(variant="cosine", hidden_size=32, num_heads=2)
    assert cfg.declare.apply == "before_projector"
    model = tiny_internvl(image_size=56)
    inputs = tiny_internvl_processor(image_size=56, max_patches=6)(
        text=["<IMG_CONTEXT> describe the image"], images=[photo("coffee")], return_tensors="pt"
    )
    layer_norm = model.model.multi_modal_projector.layer_norm  # the projector's first layer sees what it was given
    seen = {}
    hook = layer_norm.register_forward_pre_hook(lambda m, args: seen.__setitem__(len(seen), args[0].detach().clone()))
    lm = model.model.language_model
    base = lm_inputs_embeds(lm, lambda: model(**inputs))
    handle = gswa_plugin.enable(model, cfg)
    got = lm_inputs_embeds(lm, lambda: model(**inputs))
    hook.remove()
    w = handle.last_batch.weights
    assert float(w.max() - w.min()) > 0.05, w  # the weights are far from uniform
    x, scaled = seen[0], seen[1]
    torch.testing.assert_close(scaled, x * w[:, None, None], rtol=1e-5, atol=1e-6)
    image = inputs["input_ids"] == model.config.image_token_id
    moved_before = float((got[image] - base[image]).abs().max())
    gswa_plugin.disable(model)
    handle = gswa_plugin.enable(model, cfg.replace(adapter=None, declare=None))
    after = lm_inputs_embeds(lm, lambda: model(**inputs))
    moved_after = float((after[image] - base[image]).abs().max())
    assert moved_before < 1e-3 * moved_after, (moved_before, moved_after)
