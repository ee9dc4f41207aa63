"""The token budget on the anyres hosts (tiny real LLaVA-NeXT and LLaVA-OneVision, real processors,
real photographs): what the language model receives, newline tokens, generate with the KV cache."""

from __future__ import annotations

import pytest
import torch

import gswa_plugin
from gswa_plugin.apply import current_position_weights
from gswa_plugin.testing.contract import view_of_position

from .host_cases.llava_next import CASE as NEXT_CASE
from .host_cases.llava_onevision import CASE as ONEVISION_CASE
from .test_budget import lm_calls

CASES = {"llava_next": NEXT_CASE, "llava_onevision": ONEVISION_CASE}
PEAKED = {"hidden_size": 32, "num_heads": 4, "identity_init": False, "temperature": 0.1}


@pytest.mark.parametrize("mode", ["embed", "value", "attn_bias"])
@pytest.mark.parametrize("family", list(CASES))
def test_lm_receives_exactly_the_selected_packed_tokens_newlines_kept(family, mode):
    case = CASES[family]
    model, inputs = case.make_model(), case.make_inputs()
    token = model.config.image_token_id
    ids = inputs["input_ids"]
    gswa_plugin.enable(model, {**PEAKED, "mode": mode})
    state = {k: v.clone() for k, v in model.gswa.state_dict().items()}
    where = view_of_position(case, model, inputs)[ids == token]  # view of every packed token, -1: newline
    full = lm_calls(model, lambda: model(**inputs))[0]
    full_image = full[ids == token]
    full_text = [full[b][ids[b] != token] for b in range(ids.shape[0])]
    gswa_plugin.disable(model)

    handle = gswa_plugin.enable(model, {**PEAKED, "mode": mode, "budget": {"keep": 0.25}})
    model.gswa.load_state_dict(state)
    got = lm_calls(model, lambda: model(**inputs))[0]
    plan = handle.last_budget
    sel, short = plan.selection, plan.input_ids
    assert torch.equal(sel.view_of, where)  # the packing was followed token by token
    assert bool(sel.flat_mask[where < 0].all())  # every newline token is kept
    n_views = handle.last_batch.layout.views_per_image
    starts = [sum(n_views[:i]) for i in range(len(n_views) + 1)]
    counted = [int(((where >= starts[i]) & (where < starts[i + 1])).sum()) for i in range(len(n_views))]
    assert sel.budgets == [round(0.25 * c) for c in counted]
    assert int((short == token).sum()) == sel.num_kept < full_image.shape[0]
    assert torch.equal(got[short == token], full_image[sel.flat_mask])  # exactly the kept tokens, in order
    mask = plan.positions >= 0
    for b in range(ids.shape[0]):
        assert torch.equal(got[b][mask[b] & (short[b] != token)], full_text[b])
    if mode != "embed":  # each kept token weighted by its tile's weight, newlines and text by 1
        w = handle.last_batch.weights
        expect = torch.ones(short.shape)
        views = sel.view_of_kept()
        expect[short == token] = torch.where(views >= 0, w[views.clamp_min(0)].float(), torch.tensor(1.0))
        assert torch.allclose(current_position_weights(handle), expect)


@pytest.mark.parametrize("family", list(CASES))
def test_generate_with_kv_cache_on_two_images_of_different_grids(family):
    case = CASES[family]
    model, inputs = case.make_model(), case.make_inputs()
    assert inputs["attention_mask"][:, 0].eq(0).any()  # left padded
    handle = gswa_plugin.enable(model, {**PEAKED, "budget": {"keep": 0.5}})
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    views = handle.last_batch.layout.views_per_image
    assert len(set(views)) == 2
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids)
    for k, logits in enumerate(out.logits):  # cached steps agree with a full forward
        new = out.sequences[:, ids.shape[1] : ids.shape[1] + k]
        with torch.no_grad():
            ref = model(**{**inputs, "input_ids": torch.cat([ids, new], 1),
                           "attention_mask": torch.cat([mask, torch.ones_like(new)], 1)}).logits[:, -1]
        assert torch.allclose(logits, ref, atol=1e-4), (k, (logits - ref).abs().max())


def test_kept_token_picture_refuses_packed_hosts_clearly():
    from gswa_plugin.errors import UnsupportedRequestError
    from gswa_plugin.testing.tiny import sample_image
    from gswa_plugin.tools.budget_map import kept_tokens

    case = CASES["llava_next"]
    model = case.make_model()
    gswa_plugin.enable(model, PEAKED)
    from gswa_plugin.testing.tiny_hosts import tiny_llava_next_processor

    with pytest.raises(UnsupportedRequestError, match="packs its tokens"):
        kept_tokens(model, tiny_llava_next_processor(), sample_image("coffee"), {"keep": 0.25})
    assert gswa_plugin.get_handle(model).config.budget is None  # restored
