"""The `distinct_weight` key: GSWA's distinctiveness term in a training forward, collected by
`gswa_plugin.aux_loss` and by the transformers `GSWATrainer` (the needle benchmark's fifth attempt)."""

from __future__ import annotations

import warnings

import pytest
import torch

import gswa_plugin
from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor
from gswa_plugin.weighting import distinctiveness_loss

CFG = {"mode": "value", "summary": "mean", "score_input": "squared_deviation", "hidden_size": 32, "num_heads": 4}


@pytest.fixture(scope="module")
def inputs():
    processor = tiny_internvl_processor(image_size=56, max_patches=6)
    return dict(processor(text=["<IMG_CONTEXT> describe the image"], images=[sample_image("coffee")], return_tensors="pt"))


def _model(**extra):
    model = tiny_internvl(image_size=56)
    gswa_plugin.enable(model, {**CFG, **extra})
    return model


def test_off_by_default_adds_nothing(inputs):
    model = _model()
    model.train()
    model(**inputs, labels=inputs["input_ids"])
    aux = gswa_plugin.aux_loss(model)
    assert aux.dim() == 0 and float(aux) == 0.0 and not aux.requires_grad


def test_term_is_distinctiveness_loss_and_trains_gswa_only(inputs):
    model = _model(distinct_weight=2.0, distinct_temperature=0.5)
    seen = {}

    def keep(module, args, w):  # the seam's own GSWA call (the term's second run comes after it)
        seen.setdefault("call", (args[0].detach(), args[1], w.detach()))

    model.gswa.register_forward_hook(keep)
    model.train()
    model(**inputs, labels=inputs["input_ids"])
    aux = gswa_plugin.aux_loss(model)
    summaries, layout, weights = seen["call"]
    expected = 2.0 * distinctiveness_loss(weights, summaries, layout, 0.5)
    assert float(aux.detach()) > 0
    torch.testing.assert_close(aux, expected)
    aux.backward()
    host = [n for n, p in model.named_parameters() if not n.startswith("gswa.") and p.grad is not None]
    assert host == [], f"the term reached host parameters: {host[:5]}"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gswa.parameters())
    assert float(gswa_plugin.aux_loss(model)) == 0.0  # collected: cleared


def test_identity_start_and_outputs_unchanged(inputs):
    plain = tiny_internvl(image_size=56)
    model = _model(distinct_weight=1.0)
    plain.train(), model.train()
    a = plain(**inputs, labels=inputs["input_ids"])
    b = model(**inputs, labels=inputs["input_ids"])
    assert torch.equal(a.logits, b.logits)  # the term changes no output; only the loss it adds
    gswa_plugin.aux_loss(model)


def test_eval_and_no_grad_add_nothing(inputs):
    model = _model(distinct_weight=1.0)
    model.eval()
    model(**inputs)
    assert float(gswa_plugin.aux_loss(model)) == 0.0
    model.train()
    with torch.no_grad():
        model(**inputs)
    assert float(gswa_plugin.aux_loss(model)) == 0.0


def test_uncollected_term_warns_once_and_is_dropped(inputs):
    model = _model(distinct_weight=1.0)
    model.train()
    model(**inputs)
    first = gswa_plugin.get_handle(model).pop_aux().detach()
    model(**inputs)
    with pytest.warns(UserWarning, match="never collected"):
        model(**inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(**inputs)  # said once
    torch.testing.assert_close(gswa_plugin.aux_loss(model).detach(), first)  # only the latest call's term


def test_gswa_trainer_adds_the_term(inputs, tmp_path):
    from transformers import TrainingArguments

    from gswa_plugin.integrations.transformers import GSWATrainer

    model = _model(distinct_weight=1.0)
    model.train()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = GSWATrainer(model=model, args=args)
    batch = {**inputs, "labels": inputs["input_ids"]}
    loss = trainer.compute_loss(model, batch)
    task = model(**batch).loss
    aux = gswa_plugin.aux_loss(model)
    assert float(aux.detach()) > 0
    torch.testing.assert_close(loss, task + aux)


def test_gswa_trainer_scales_the_term_like_a_loss_normalised_for_accumulation(inputs, tmp_path):
    """A loss the model normalised by ``num_items_in_batch`` is not divided by the accumulation
    steps afterwards (Trainer.training_step), so the term is divided here instead."""
    from transformers import TrainingArguments

    from gswa_plugin.integrations.transformers import GSWATrainer

    model = _model(distinct_weight=1.0)
    model.train()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, gradient_accumulation_steps=4)
    trainer = GSWATrainer(model=model, args=args)
    trainer.model_accepts_loss_kwargs = True
    trainer.current_gradient_accumulation_steps = 4
    batch = {**inputs, "labels": inputs["input_ids"]}
    n = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()) * 4)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=n)
    model(**batch)
    aux = gswa_plugin.aux_loss(model).detach()
    task = model(**batch, num_items_in_batch=n).loss
    gswa_plugin.aux_loss(model)
    torch.testing.assert_close(loss.detach(), task.detach() + aux / 4)


def test_key_gives_gswa_the_gradient_of_the_benchmark_route(inputs):
    """The needle benchmark adds `distinctiveness_loss` of the seam's own weights with its gradient
    sent to GSWA only (`backward(inputs=gswa_params)`); the key's rerun on detached summaries gives
    GSWA the same gradient, so the benchmark's result is the key's."""
    model = _model(distinct_weight=1.0, identity_init=False)
    seen = {}

    def keep(module, args, w):
        seen.setdefault("call", (args[0], args[1], w))

    model.gswa.register_forward_hook(keep)
    model.train()
    model(**inputs)
    params = [p for p in model.gswa.parameters() if p.requires_grad]
    summaries, layout, weights = seen["call"]
    bench = torch.autograd.grad(distinctiveness_loss(weights, summaries, layout, 1.0), params, allow_unused=True)
    key = torch.autograd.grad(gswa_plugin.aux_loss(model), params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in key)
    for a, b in zip(bench, key):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_term_under_gradient_checkpointing_is_collected_once_per_step(inputs, reentrant):
    """A recomputed forward in the backward must not leave a stale term behind (no warning), and
    the term still reaches GSWA's parameters."""
    model = tiny_internvl(image_size=56)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    gswa_plugin.enable(model, {**CFG, "distinct_weight": 1.0})
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for _ in range(3):
            task = model(**inputs, labels=inputs["input_ids"]).loss
            aux = gswa_plugin.aux_loss(model)
            assert float(aux.detach()) > 0
            (task + aux).backward()
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gswa.parameters())
            model.zero_grad()
