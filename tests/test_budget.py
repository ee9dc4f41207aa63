"""The token budget (``budget:``): the math, the config, and what the language model receives
on a tiny real InternVLForConditionalGeneration with the real processor and real photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gswa_plugin
from gswa_plugin import budget
from gswa_plugin.apply import current_position_weights
from gswa_plugin.config import GSWAConfig
from gswa_plugin.errors import ConfigError
from gswa_plugin.layout import TileLayout
from gswa_plugin.testing.tiny import tiny_internvl, tiny_internvl_processor

#: 112 px tiles: 16 visual tokens per tile, enough to choose among.
TILE = 112
CFG = {"hidden_size": 32, "num_heads": 4}


# --- the math ---------------------------------------------------------------------------------
def test_allocate_is_exact_capped_and_proportional():
    q = budget.allocate(10, [1, 1, 2], [100, 100, 100])
    assert sum(q) == 10 and q[2] == 5
    assert budget.allocate(10, [1, 1, 8], [100, 100, 4]) == [3, 3, 4]  # the capped item's excess is shared
    assert budget.allocate(50, [1, 2], [10, 10]) == [10, 10]  # never above capacity
    assert budget.allocate(3, [0, 1, 0], [5, 5, 5]) == [0, 3, 0]  # share 0 -> 0 tokens
    assert budget.allocate(3, [0, 0], [5, 5]) in ([2, 1], [1, 2])  # all zero -> equal split
    for total in range(0, 40):
        q = budget.allocate(total, [0.3, 1.7, 1.0, 0.01], [8, 8, 8, 8])
        assert sum(q) == min(total, 32) and all(0 <= x <= 8 for x in q)


def test_image_budget_fraction_and_count():
    assert budget.image_budget(0.5, 100) == 50
    assert budget.image_budget(0.001, 100) == 1
    assert budget.image_budget(30, 100) == 30
    assert budget.image_budget(300, 100) == 100


def _toy(seed=0, views=(4, 1), tokens=8, dim=6):
    g = torch.Generator().manual_seed(seed)
    layout = TileLayout(views, "last")
    feats = torch.randn(layout.num_views, tokens, dim, generator=g)
    summaries = torch.randn(layout.num_views, dim, generator=g)
    return feats, summaries, layout


def test_select_counts_order_and_methods():
    feats, summaries, layout = _toy()
    weights = torch.tensor([2.5, 0.1, 0.3, 0.1, 1.0, 1.0])  # 3 tiles + thumbnail, then a single view
    sel = budget.select(feats, weights, summaries, layout, 0.5)
    assert sel.budgets == [16, 4] and sel.num_kept == 20
    assert sel.keep_mask.sum(1).tolist() == sel.quotas
    assert sel.quotas[0] > sel.quotas[1]  # the heavy tile gets more
    kept = sel.gather(feats)
    assert torch.equal(kept, feats.reshape(-1, 6)[sel.flat_mask])  # original order
    # norm: the kept tokens of each view are its highest-norm ones
    for v, q in enumerate(sel.quotas):
        norms = feats[v].norm(dim=-1)
        assert set(norms.argsort(descending=True)[:q].tolist()) == set(sel.keep_mask[v].nonzero().flatten().tolist())
    uni = budget.select(feats, weights, summaries, layout, 0.5, method="uniform")
    assert uni.quotas[:4] == [4, 4, 4, 4]
    rnd = [budget.select(feats, weights, summaries, layout, 0.5, method="random", seed=s).keep_mask for s in (0, 0, 1)]
    assert torch.equal(rnd[0], rnd[1]) and not torch.equal(rnd[0], rnd[2])
    gc = budget.select(feats, weights, summaries, layout, 0.5, method="globalcom")
    cos = torch.nn.functional.cosine_similarity(summaries[3][None], summaries[:3], dim=-1)
    assert gc.quotas[int(cos.argmax())] == max(gc.quotas[:3])
    thumb = budget.select(feats, weights, summaries, layout, 0.5, thumbnail_share=0.5)
    assert thumb.quotas[3] == 8 and sum(thumb.quotas[:4]) == 16
    zero = budget.select(feats, torch.tensor([4.0, 0.0, 0.0, 0.0, 1.0, 1.0]), summaries, layout, 0.25)
    assert zero.quotas[1:3] == [0, 0]  # whole tiles may drop to zero
    assert budget.select(feats, weights, summaries, layout, 5).budgets == [5, 5]  # a token count


@pytest.mark.parametrize(
    "block, message",
    [
        ({"keep": 1}, "ambiguous"),
        ({"keep": 1.5}, "(0, 1]"),
        ({"keep": 0.5, "method": "topk"}, "budget.method"),
        ({"keep": 0.5, "in_tile": "cls"}, "budget.in_tile"),
        ({"method": "gswa"}, "budget.keep"),
    ],
)
def test_config_errors_name_the_key(block, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        GSWAConfig.from_dict({"budget": block})


# --- InternVL ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor():
    proc = tiny_internvl_processor(image_size=TILE, max_patches=6)
    proc.tokenizer.padding_side = "left"
    return proc


@pytest.fixture(scope="module")
def inputs(processor):
    from gswa_plugin.testing.tiny import sample_image

    return processor(
        text=["<IMG_CONTEXT> describe the image", "what is in the picture <IMG_CONTEXT> ?"],
        images=[sample_image("astronaut"), sample_image("coffee").resize((300, 100))],
        return_tensors="pt",
        padding=True,
    )


@pytest.fixture
def model():
    return tiny_internvl(image_size=TILE)


def peaked(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.gswa.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def lm_calls(model, fn):
    """Run ``fn()`` and return the ``inputs_embeds`` of every language-model call it made."""
    seen = []
    h = model.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["inputs_embeds"].detach().clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            fn()
    finally:
        h.remove()
    return seen


def gen(model, inputs, n=3):
    return model.generate(
        **inputs, max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True
    )


def test_keep_one_is_bit_identical_and_installs_nothing(model, inputs):
    gswa_plugin.enable(model, CFG)
    peaked(model)
    state = {k: v.clone() for k, v in model.gswa.state_dict().items()}
    with torch.no_grad():
        base, g0 = model(**inputs).logits, gen(model, inputs)
    gswa_plugin.disable(model)
    gswa_plugin.enable(model, {**CFG, "budget": {"keep": 1.0}})
    model.gswa.load_state_dict(state)
    assert "forward" not in vars(model)
    with torch.no_grad():
        out, g1 = model(**inputs).logits, gen(model, inputs)
    assert torch.equal(base, out) and torch.equal(g0.sequences, g1.sequences)
    assert all(torch.equal(a, b) for a, b in zip(g0.logits, g1.logits))


@pytest.mark.parametrize("mode", ["embed", "value", "attn_bias"])
@pytest.mark.parametrize("method", ["gswa", "uniform", "random", "globalcom"])
def test_lm_receives_exactly_the_selected_tokens_in_order(model, inputs, mode, method):
    token = model.config.image_token_id
    handle = gswa_plugin.enable(model, {**CFG, "mode": mode})
    peaked(model)
    state = {k: v.clone() for k, v in model.gswa.state_dict().items()}
    full = lm_calls(model, lambda: model(**inputs))[0]
    ids = inputs["input_ids"]
    full_image = full[ids == token]  # [views * tokens, D], in fill order
    full_text = [full[b][ids[b] != token] for b in range(ids.shape[0])]
    weights = handle.last_batch.weights.clone()
    gswa_plugin.disable(model)

    handle = gswa_plugin.enable(model, {**CFG, "mode": mode, "budget": {"keep": 0.25, "method": method}})
    model.gswa.load_state_dict(state)
    got = lm_calls(model, lambda: model(**inputs))[0]
    plan = handle.last_budget
    short = plan.input_ids
    sel = plan.selection
    tokens_per_view = model.config.image_seq_length
    views = handle.last_batch.layout.views_per_image
    assert sel.budgets == [round(0.25 * n * tokens_per_view) for n in views]
    assert int((short == token).sum()) == sel.num_kept == sum(sel.budgets) < full_image.shape[0]
    assert torch.equal(got[short == token], full_image[sel.flat_mask])  # exactly the kept tokens, in order
    mask = plan.positions >= 0
    for b in range(ids.shape[0]):  # text unchanged and in order; padding only where added
        assert torch.equal(got[b][mask[b] & (short[b] != token)], full_text[b])
    if method == "gswa":
        assert torch.equal(handle.last_batch.weights, weights)
    if mode != "embed":  # the mode weights each kept token by its tile's weight
        seen = current_position_weights(handle)
        expect = torch.ones(short.shape)
        expect[short == token] = weights[sel.view_of_kept()]
        assert torch.allclose(seen, expect)


@pytest.mark.parametrize("mode", ["embed", "value", "attn_bias"])
def test_generate_with_kv_cache_batch_of_two_tile_counts_left_padded(model, inputs, mode):
    assert inputs["attention_mask"][:, 0].eq(0).any()  # left padded
    handle = gswa_plugin.enable(model, {**CFG, "mode": mode, "budget": {"keep": 0.5}})
    peaked(model)
    calls = lm_calls(model, lambda: gen(model, inputs, 3))
    views = handle.last_batch.layout.views_per_image
    assert len(set(views)) == 2 and min(views) > 1  # two images, different tile counts
    plan = handle.last_budget
    assert [c.shape[1] for c in calls] == [plan.input_ids.shape[1], 1, 1]  # prefill, then cached steps
    with torch.no_grad():
        out = gen(model, inputs, 3)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids)  # the caller's prompt comes back
    # every step's logits equal a full forward (no cache) over the prompt and the tokens so far
    for k, logits in enumerate(out.logits):
        new = out.sequences[:, ids.shape[1] : ids.shape[1] + k]
        with torch.no_grad():
            ref = model(
                input_ids=torch.cat([ids, new], 1), attention_mask=torch.cat([mask, torch.ones_like(new)], 1),
                pixel_values=inputs["pixel_values"],
            ).logits[:, -1]
        assert torch.allclose(logits, ref, atol=1e-4), (k, (logits - ref).abs().max())


def test_budget_errors_are_clear(model, inputs):
    gswa_plugin.enable(model, {**CFG, "budget": {"keep": 0.5}})
    with pytest.raises(gswa_plugin.LayoutError, match="position_ids"):
        model(**inputs, position_ids=torch.arange(inputs["input_ids"].shape[1])[None])
    with pytest.raises(gswa_plugin.LayoutError, match="input_ids"):
        model(inputs_embeds=torch.zeros(2, 3, 64), pixel_values=inputs["pixel_values"])
    with pytest.raises(gswa_plugin.LayoutError, match="num_beams=2"):
        model.generate(**inputs, num_beams=2, max_new_tokens=2)


def test_unsupported_host_is_named():
    from gswa_plugin.testing.tiny_more import tiny_idefics3

    model = tiny_idefics3()
    with pytest.raises(ConfigError, match="not supported with the 'idefics3' adapter.*internvl, llava_next"):
        gswa_plugin.enable(model, {**CFG, "budget": {"keep": 0.5}})
    assert not gswa_plugin.is_enabled(model) and not hasattr(model, "gswa")  # nothing left behind


def test_equal_remainders_go_to_the_best_scored_view_not_the_first():
    assert budget.allocate(1, [1, 1, 1], [1, 1, 1], tiebreak=[0.1, 0.9, 0.5]) == [0, 1, 0]
    feats, summaries, layout = _toy(tokens=1, views=(6,))
    norms = feats[:, 0].norm(dim=-1)
    sel = budget.select(feats, torch.ones(6), summaries, layout, 0.5, method="uniform", thumbnail_share=0.0)
    kept = [v for v in range(5) if sel.quotas[v]]
    assert sorted(kept) == sorted(norms[:5].argsort(descending=True)[:3].tolist())


def test_set_budget_changes_and_removes_the_budget_keeping_gswa(model, inputs):
    handle = gswa_plugin.enable(model, CFG)
    peaked(model)
    with torch.no_grad():
        base = model(**inputs).logits
    gswa_plugin.set_budget(model, 0.5)
    assert handle.config.budget.keep == 0.5 and "forward" in vars(model)
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] < base.shape[1]
    gswa_plugin.set_budget(model, None)
    assert handle.config.budget is None and "forward" not in vars(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, base)
    with pytest.raises(ConfigError, match="budget.method"):
        gswa_plugin.set_budget(model, {"keep": 0.5, "method": "best"})
    assert handle.config.budget is None  # a bad budget leaves the model as it was
    assert budget.parse_keep("0.25") == 0.25 and budget.parse_keep("64") == 64
    with pytest.raises(ConfigError, match="keep"):
        budget.parse_keep("half")


def test_kept_tokens_picture_darkens_exactly_the_dropped_tokens(model, processor):
    from gswa_plugin.testing.tiny import sample_image
    from gswa_plugin.tools.budget_map import kept_tokens, kept_tokens_map

    gswa_plugin.enable(model, CFG)
    peaked(model)
    image = sample_image("coffee")
    kept = kept_tokens(model, processor, image, {"keep": 0.25})
    assert model.gswa is not None and gswa_plugin.get_handle(model).config.budget is None  # restored
    rows, cols = kept.grid
    assert len(kept.tile_masks) == rows * cols and kept.thumbnail_mask is not None
    assert kept.kept == sum(int(m.sum()) for m in kept.tile_masks) + int(kept.thumbnail_mask.sum())
    assert kept.kept == round(0.25 * kept.total)
    width = 640
    pic = np.asarray(kept_tokens_map(image, kept, "t", width=width), dtype=float)
    cell = (width - width // 4 - 8) // cols
    ref = np.asarray(image.convert("RGB").resize((cell * cols, cell * rows)), dtype=float)
    tiles = pic[46 : 46 + cell * rows, : cell * cols]
    side = kept.tile_masks[0].shape[0]
    for i, m in enumerate(kept.tile_masks):  # kept cells unchanged, dropped cells darkened
        r, c = divmod(i, cols)
        for a in range(side):
            for b in range(side):
                ys = slice(r * cell + (a * cell) // side + 1, r * cell + ((a + 1) * cell) // side - 1)
                xs = slice(c * cell + (b * cell) // side + 1, c * cell + ((b + 1) * cell) // side - 1)
                ratio = (tiles[ys, xs].sum() + 1) / (ref[ys, xs].sum() + 1)
                assert (ratio > 0.95) if m[a, b] else (ratio < 0.25), (i, a, b, ratio)


def test_gswa_visualize_keep_writes_the_kept_tokens_picture(tmp_path, monkeypatch, processor):
    from typer.testing import CliRunner

    from gswa_plugin.cli import app
    from gswa_plugin.tools import hosts

    monkeypatch.setattr(hosts, "tiny_default", lambda max_tiles=None: (tiny_internvl(image_size=TILE), processor))
    out = tmp_path / "maps"
    res = CliRunner().invoke(app, ["visualize", "--image", "coffee", "--keep", "0.25", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["coffee-kept.png", "coffee.png"]
    assert "kept" in res.output


def test_save_load_and_deepcopy_keep_the_budget(model, inputs, tmp_path):
    import copy

    gswa_plugin.enable(model, {**CFG, "budget": {"keep": 0.25, "method": "uniform"}})
    peaked(model)
    with torch.no_grad():
        want = model(**inputs).logits
    gswa_plugin.save(model, tmp_path / "g")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin(**inputs).logits, want)
    gswa_plugin.disable(model)
    handle = gswa_plugin.load(model, tmp_path / "g")
    assert handle.config.budget.keep == 0.25 and handle.config.budget.method == "uniform"
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, want)


def test_labels_are_shortened_with_the_call_and_gswa_trains_through_it(model, inputs):
    handle = gswa_plugin.enable(model, {**CFG, "mode": "value", "budget": {"keep": 0.5}})
    peaked(model)
    labels = inputs["input_ids"].clone()
    out = model(**inputs, labels=labels)
    plan = handle.last_budget
    assert out.logits.shape[1] == plan.input_ids.shape[1] < labels.shape[1]
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.gswa.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", ["text_guided", "text_cross_attn"])
def test_question_aware_variants_select_by_the_question_in_forward_and_generate(model, processor, inputs, variant):
    """The budget runs the seam before ``generate()`` is entered, where a question-aware GSWA found
    no text yet (``LayoutError``); forward worked. Now both read the prompt: generate keeps the
    tokens that a forward of the same call keeps, with the same weights and the same first logits,
    and another question moves the weights."""
    from gswa_plugin.testing.tiny import sample_image

    handle = gswa_plugin.enable(model, {**CFG, "variant": variant, "budget": {"keep": 0.5}})
    peaked(model)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    mask, weights = handle.last_budget.selection.flat_mask.clone(), handle.last_batch.weights.clone()
    with torch.no_grad():
        out = gen(model, inputs, 2)
    assert torch.equal(handle.last_budget.selection.flat_mask, mask)
    assert torch.equal(handle.last_batch.weights, weights)
    assert torch.allclose(out.logits[0], logits, atol=1e-5)
    other = processor(
        text=["<IMG_CONTEXT> what colour is the tile", "how many shapes <IMG_CONTEXT> ?"],
        images=[sample_image("astronaut"), sample_image("coffee").resize((300, 100))],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        gen(model, other, 1)
    assert handle.last_batch.weights.shape == weights.shape
    assert not torch.allclose(handle.last_batch.weights, weights)
