"""GSWA on the llava package's own classes (PyPI llava-torch): a tiny LLaVA-1.6 with anyres and
spatial_unpad, enabled through the llava integration.

Runs where llava is installed (``.venv-llava``, CI step ``.ci/steps/31-llava.sh``):
``python -m pytest -m llava tests/test_llava.py``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("llava", reason="needs the llava package: pip install --no-deps llava-torch==1.2.2.post1")

import gswa_plugin  # noqa: E402
from gswa_plugin.integrations.llava import enable_on_llava, gswa_trainer_class, prepare_llava_training_code
from tests.host_cases.llava_torch import llava_inputs, tiny_llava  # noqa: E402

pytestmark = pytest.mark.llava

GSWA = {"variant": "self_attn", "hidden_size": 32, "num_heads": 4, "num_layers": 1}


def lm_embeds(model, inputs) -> torch.Tensor:
    """The ``inputs_embeds`` llava's language model (``model.model``) receives in a forward."""
    seen = {}

    def hook(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    h = model.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return seen["embeds"]


@pytest.fixture
def model():
    return tiny_llava()


@pytest.fixture(scope="module")
def inputs():
    return llava_inputs()


def _scramble(model, seed: int = 3) -> None:
    """Give GSWA random parameters (LayerNorms kept at identity), so the weights are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.gswa.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in model.gswa.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.reset_parameters()


def test_the_adapter_is_chosen_for_llava_classes(model):
    handle = enable_on_llava(model, GSWA)
    assert handle is model
    assert gswa_plugin.get_handle(model).adapter.name == "llava_torch"


def test_identity_at_initialisation(model, inputs):
    before = lm_embeds(model, inputs)
    with torch.no_grad():
        logits_before = model(**inputs).logits
    enable_on_llava(model, GSWA)
    after = lm_embeds(model, inputs)
    with torch.no_grad():
        logits_after = model(**inputs).logits
    assert torch.equal(before, after)
    assert torch.equal(logits_before, logits_after)
    weights = gswa_plugin.last_weights(model)
    assert [w.tolist() for w in weights] == [[1.0] * 4, [1.0] * 3]  # 2x2 and 1x3 anyres grids


def test_non_uniform_weights_scale_each_tile_before_unpadding(model, inputs):
    """The language model receives exactly what llava builds from views scaled by their weights:
    base image (thumbnail) x1, tile i x w_i, then llava's own unpadding and newline tokens."""
    enable_on_llava(model, GSWA)
    _scramble(model)
    weighted = lm_embeds(model, inputs)
    batch = gswa_plugin.get_handle(model).last_batch
    per_view = batch.weights.detach().clone()
    assert batch.layout.views_per_image == (5, 4)
    assert per_view[0].item() == 1.0 and per_view[5].item() == 1.0  # base images keep weight 1
    tiles = gswa_plugin.last_weights(model)
    assert all(abs(float(w.mean()) - 1.0) < 1e-5 for w in tiles)
    assert max(float(w.max() - w.min()) for w in tiles) > 0.1

    gswa_plugin.disable(model)
    plain = lm_embeds(model, inputs)
    original = model.encode_images
    model.encode_images = lambda images: original(images) * per_view[:, None, None].to(original(images).dtype)
    try:
        reference = lm_embeds(model, inputs)
    finally:
        del model.encode_images
    torch.testing.assert_close(weighted, reference, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(weighted, plain)
    # text tokens are untouched: the first row starts with the image, the second with text
    torch.testing.assert_close(weighted[1, :4], plain[1, :4], rtol=0, atol=0)


def test_optimiser_steps_change_gswa_parameters(model, inputs):
    enable_on_llava(model, GSWA)
    model.train()
    start = {k: v.detach().clone() for k, v in model.gswa.state_dict().items()}
    opt = torch.optim.AdamW(model.gswa.parameters(), lr=1e-2)
    labels = inputs["input_ids"].clone()
    labels[labels < 0] = -100
    labels[inputs["attention_mask"] == 0] = -100
    losses = []
    for _ in range(3):
        out = model(**inputs, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.gswa.parameters() if p.grad is not None)
        opt.step()
        losses.append(out.loss.item())
    changed = [k for k, v in model.gswa.state_dict().items() if not torch.equal(v, start[k])]
    assert changed, "no GSWA parameter moved"
    assert any("query" in k for k in changed)
    model.eval()
    lm_embeds(model, inputs)
    assert max(float(w.max() - w.min()) for w in gswa_plugin.last_weights(model)) > 0


def test_save_load_round_trip(model, inputs, tmp_path):
    enable_on_llava(model, GSWA)
    _scramble(model)
    expected = lm_embeds(model, inputs)
    weights = [w.clone() for w in gswa_plugin.last_weights(model)]
    gswa_plugin.save(model, tmp_path / "gswa")

    fresh = tiny_llava()
    gswa_plugin.load(fresh, tmp_path / "gswa")
    assert gswa_plugin.get_handle(fresh).adapter.name == "llava_torch"
    got = lm_embeds(fresh, inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for a, b in zip(gswa_plugin.last_weights(fresh), weights):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_trainer_subclass_enables_gswa_and_saves_it(model, inputs, tmp_path):
    """llava's LLaVATrainer, subclassed by the integration: GSWA is on before the optimizer exists
    and ``_save`` writes ``<output_dir>/gswa`` next to the model."""
    from transformers import TrainingArguments

    prepare_llava_training_code()
    from llava.train.llava_trainer import LLaVATrainer

    cls = gswa_trainer_class(LLaVATrainer, gswa_plugin.GSWAConfig(**GSWA))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    for name in ("mm_projector_lr", "group_by_modality_length"):
        setattr(args, name, None if name == "mm_projector_lr" else False)
    trainer = cls(model=model, args=args)
    assert gswa_plugin.is_enabled(model)
    trainer.create_optimizer()
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in model.gswa.parameters())
    trainer._save(str(tmp_path / "out"))
    saved = tmp_path / "out" / "gswa"
    assert (saved / "gswa.safetensors").is_file()
    fresh = tiny_llava()
    gswa_plugin.load(fresh, saved)
    for k, v in fresh.gswa.state_dict().items():
        torch.testing.assert_close(v, model.gswa.state_dict()[k], rtol=0, atol=0)


def test_llava_train_runs_through_the_launcher(tmp_path):
    """llava's own ``train()`` (HfArgumentParser, LazySupervisedDataset, LLaVATrainer) run by
    ``python -m gswa_plugin.integrations.llava.train``: GSWA computes weights at every step and is
    saved next to the model. (llava-torch's data pipeline gives one view per image, so the weights
    are 1 here; the LLaVA-NeXT repository's pipeline produces anyres tiles.)"""
    from safetensors.torch import load_file

    from gswa_plugin.hookspecs import hookimpl
    from gswa_plugin.integrations.llava.train import main
    from gswa_plugin.plugins import register_plugin
    from tests.hosts_llava.fixtures import write_run

    seen = []

    class Count:
        @hookimpl
        def gswa_weights_computed(self, weights, batch, handle):
            seen.append((handle.model.training, [w.tolist() for w in weights]))

    register_plugin(Count(), name="count")
    main(write_run(tmp_path))
    assert [training for training, _ in seen] == [True, True]  # max_steps 2, one forward each
    assert [len(w) for _, w in seen] == [2, 1]  # 3 samples in batches of 2: images per forward
    assert all(x == [1.0] for _, w in seen for x in w)  # one view per image in this pipeline
    out = tmp_path / "out"
    fresh = tiny_llava()
    gswa_plugin.load(fresh, out / "gswa")
    saved = load_file(str(out / "model.safetensors"))
    gswa_keys = sorted(k for k in saved if k.startswith("gswa."))
    assert gswa_keys and len(gswa_keys) == len(fresh.gswa.state_dict())
    for k, v in fresh.gswa.state_dict().items():
        torch.testing.assert_close(saved[f"gswa.{k}"], v, rtol=0, atol=0)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_twenty_steps_under_gradient_checkpointing_train_gswa(model, inputs, reentrant):
    """Issue 12: llava's recipes turn gradient checkpointing on. 20 optimiser steps with either
    kind move GSWA's parameters, with the same first gradient as without checkpointing."""
    enable_on_llava(model, GSWA)
    _scramble(model)
    model.train()
    labels = inputs["input_ids"].clone()
    labels[labels < 0] = -100
    labels[inputs["attention_mask"] == 0] = -100

    def grads():
        model.gswa.zero_grad(set_to_none=True)
        model(**inputs, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.gswa.named_parameters()}

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    checkpointed = grads()
    for n, g in plain.items():
        torch.testing.assert_close(checkpointed[n], g, rtol=1e-5, atol=1e-7)
    start = {k: v.detach().clone() for k, v in model.gswa.state_dict().items()}
    opt = torch.optim.AdamW(model.gswa.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        opt.step()
    changed = [k for k, v in model.gswa.state_dict().items() if not torch.equal(v, start[k])]
    assert any("query" in k for k in changed), changed


def test_value_mode_is_refused_at_enable_with_the_fix(model):
    """llava's classes build the language model's input per sample inside
    ``prepare_inputs_labels_for_multimodal``; the adapter does not locate image positions there,
    so the modes inside the language model are refused before anything is patched."""
    with pytest.raises(gswa_plugin.UnsupportedModeError, match="mode: embed"):
        enable_on_llava(model, {**GSWA, "mode": "value"})
    assert not gswa_plugin.is_enabled(model)


def test_the_trainer_subclass_adds_the_distinctiveness_term(model, inputs, tmp_path):
    """With ``distinct_weight`` set, the llava trainer's loss is the task loss plus
    ``gswa_plugin.aux_loss`` (docs page 'Training', the distinctiveness term)."""
    from transformers import TrainingArguments

    prepare_llava_training_code()
    from llava.train.llava_trainer import LLaVATrainer

    cls = gswa_trainer_class(LLaVATrainer, gswa_plugin.GSWAConfig(**GSWA, distinct_weight=1.0))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    for name in ("mm_projector_lr", "group_by_modality_length"):
        setattr(args, name, None if name == "mm_projector_lr" else False)
    trainer = cls(model=model, args=args)
    model.train()
    labels = inputs["input_ids"].clone()
    labels[labels < 0] = -100
    labels[inputs["attention_mask"] == 0] = -100
    batch = {**inputs, "labels": labels}
    loss = trainer.compute_loss(model, batch)
    task = model(**batch).loss
    aux = gswa_plugin.aux_loss(model)
    assert float(aux.detach()) > 0
    torch.testing.assert_close(loss.detach(), (task + aux).detach())
