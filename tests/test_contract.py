"""The adapter contract, checked on every registered adapter with its tiny real host.

Parametrised at collection time over ``gswa_plugin.plugins.adapter_names()``: an adapter without
a case in ``tests/host_cases/`` fails here (it is not skipped), so registering an adapter obliges
its author to add a case. Every check looks at what the language model actually receives (a
forward pre-hook on ``case.language_model(model)`` capturing ``inputs_embeds``) or at logits.

Which language-model positions hold which view is found without host knowledge: a test plugin
answers ``gswa_process_tiles`` first and replaces every view's features by its own marker value;
the positions where a marker lands belong to that view (tokens the host drops, such as
LLaVA-NeXT's unpadding, never land; tokens the host adds, such as newlines, carry no marker).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

import gswa_plugin
from gswa_plugin import plugins
from gswa_plugin.hookspecs import hookimpl
from gswa_plugin.layout import TileBatch

from .host_cases import HostCase, all_cases

#: A small GSWA so that every check stays fast.
SMALL = {"hidden_size": 32, "num_heads": 4}
#: Non-identity initial parameters and a sharp temperature: clearly non-uniform weights.
PEAKED = {**SMALL, "identity_init": False, "temperature": 0.1}


def _params() -> list[Any]:
    by_adapter: dict[str, list[HostCase]] = defaultdict(list)
    for case in all_cases():
        by_adapter[case.adapter].append(case)
    params = []
    for name in plugins.adapter_names():
        if not by_adapter.get(name):
            params.append(pytest.param((name, None), id=f"{name}-has-no-case"))
        for case in by_adapter.get(name, []):
            params.append(pytest.param((name, case), id=case.id))
    return params


PARAMS = _params()


@pytest.fixture(params=PARAMS)
def case(request) -> HostCase:
    name, found = request.param
    if found is None:
        pytest.fail(
            f"adapter '{name}' is registered but has no contract case: add a module to tests/host_cases/ "
            "exposing `CASE = HostCase(adapter=..., ...)` (see tests/host_cases/__init__.py)"
        )
    return found


def _config(case: HostCase, **extra: Any) -> dict[str, Any]:
    return {**SMALL, **case.config, **extra}


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _generate(model, inputs):
    with torch.no_grad():
        return model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )


def lm_embeds(case: HostCase, model, inputs) -> torch.Tensor:
    """The ``inputs_embeds`` the language model receives in one forward."""
    seen: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    h = case.language_model(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _logits(model, inputs)
    finally:
        h.remove()
    return seen["embeds"]


class _Markers:
    """Answers ``gswa_process_tiles`` first: view ``v``'s features become the constant ``-1000 - v``."""

    @hookimpl(tryfirst=True)
    def gswa_process_tiles(self, batch: TileBatch, handle: Any) -> TileBatch:
        f = batch.features
        marks = -1000.0 - torch.arange(f.shape[0], dtype=f.dtype, device=f.device)
        batch.features = marks.view(-1, *([1] * (f.dim() - 1))).expand_as(f).clone()
        batch.weights = torch.ones(f.shape[0], device=f.device)
        return batch


def view_of_position(case: HostCase, model, inputs, n_views: int) -> torch.Tensor:
    """``[batch, seq]``: the view whose features sit at each LM position, ``-1`` elsewhere.
    GSWA must be enabled on ``model``."""
    marker = _Markers()
    plugins.register_plugin(marker, name="contract-markers")
    try:
        embeds = lm_embeds(case, model, inputs)
    finally:
        plugins.unregister_plugin(marker)
    where = torch.full(embeds.shape[:2], -1, dtype=torch.long)
    for v in range(n_views):
        hit = (embeds == -1000.0 - v).all(dim=-1)
        assert hit.any(), f"view {v}'s features reach no language-model position"
        assert not (where[hit] >= 0).any(), "two views claim the same position"
        where[hit] = v
    return where


def _state(model) -> dict[str, Any]:
    """Instance attributes and hooks of every submodule (what enable() may patch)."""
    return {
        name: (sorted(vars(m)), len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    }


# --- the contract ---------------------------------------------------------------------------
def test_every_case_names_a_registered_adapter():
    names = set(plugins.adapter_names())
    unknown = [c.id for c in all_cases() if c.adapter not in names]
    assert not unknown, f"cases for adapters that are not registered: {unknown}"


def test_every_adapter_has_a_row_in_the_docs():
    page = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
    rows = [line for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    missing = [n for n in plugins.adapter_names() if not any(f"`{n}`" in row.split("|")[1] for row in rows)]
    assert not missing, f"docs/adapters.md 'Built-in adapters' has no row for: {missing}"


def test_identity_at_initialisation_forward_and_generate(case):
    model, inputs = case.make_model(), case.make_inputs()
    base = _logits(model, inputs)
    gen0 = _generate(model, inputs) if case.supports_generate else None
    gswa_plugin.enable(model, _config(case))
    assert torch.equal(_logits(model, inputs), base)
    assert all(torch.equal(w, torch.ones_like(w)) for w in gswa_plugin.last_weights(model))
    if gen0 is not None:
        gen1 = _generate(model, inputs)
        assert torch.equal(gen0.sequences, gen1.sequences)
        assert len(gen0.logits) == len(gen1.logits)
        for step, (a, b) in enumerate(zip(gen0.logits, gen1.logits)):
            assert torch.equal(a, b), f"generate() step {step} differs"


def test_language_model_receives_exactly_w_times_each_tile(case):
    model, inputs = case.make_model(), case.make_inputs()
    base = lm_embeds(case, model, inputs)
    handle = gswa_plugin.enable(model, _config(case, **PEAKED))
    where = view_of_position(case, model, inputs, sum(case.views_per_image))
    got = lm_embeds(case, model, inputs)
    w = handle.last_batch.weights
    assert not torch.allclose(w, torch.ones_like(w)), "weights should be non-uniform here"
    image_pos = where >= 0
    expected = base.clone()
    expected[image_pos] = base[image_pos] * w[where[image_pos]].to(base.dtype)[:, None]
    assert torch.equal(got, expected)  # tiles scaled exactly; text and host-added tokens untouched
    for g in handle.last_batch.layout.global_indices():
        if g is not None:
            assert w[g] == 1.0
            assert torch.equal(got[where == g], base[where == g])  # thumbnail unchanged


def test_gradients_reach_every_gswa_parameter(case):
    model, inputs = case.make_model(), case.make_inputs()
    gswa_plugin.enable(model, _config(case, variant="self_attn", identity_init=False, num_layers=1))
    model.train()
    out = model(**inputs, labels=inputs["input_ids"].clone())
    out.loss.backward()
    w = gswa_plugin.get_handle(model).last_batch.weights
    assert not torch.allclose(w, torch.ones_like(w))
    for name, p in model.gswa.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_layout_matches_what_the_processor_produced(case):
    model, inputs = case.make_model(), case.make_inputs()
    assert len(case.views_per_image) == 2 and case.views_per_image[0] != case.views_per_image[1], (
        "a contract case needs two images with different tile counts"
    )
    handle = gswa_plugin.enable(model, _config(case))
    _logits(model, inputs)
    layout = handle.last_batch.layout
    assert list(layout.views_per_image) == case.views_per_image
    assert layout.global_position == handle.adapter.global_position
    tiles = [w.shape[0] for w in gswa_plugin.last_weights(model)]
    assert tiles == layout.tiles_per_image()


def test_disable_restores_output_and_removes_patches(case):
    model, inputs = case.make_model(), case.make_inputs()
    base = _logits(model, inputs)  # first call: the host's own lazy set-up happens here
    before = _state(model)
    gswa_plugin.enable(model, _config(case, variant="cosine"))
    assert _state(model) != before, "enable() patched nothing"
    changed = _logits(model, inputs)
    assert not torch.equal(changed, base)
    gswa_plugin.disable(model)
    assert not hasattr(model, "gswa")
    assert _state(model) == before
    assert torch.equal(_logits(model, inputs), base)


def test_save_load_round_trip_on_a_fresh_model(case, tmp_path):
    model, inputs = case.make_model(), case.make_inputs()
    base = _logits(model, inputs)
    gswa_plugin.enable(model, _config(case, **PEAKED))
    trained = _logits(model, inputs)
    assert not torch.equal(trained, base)
    gswa_plugin.save(model, tmp_path / "gswa")
    fresh = case.make_model()
    gswa_plugin.load(fresh, tmp_path / "gswa")
    assert torch.equal(_logits(fresh, inputs), trained)
