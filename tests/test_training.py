"""Training a recipe in-process on CPU: tiny real InternVL, real photographs, transformers' Trainer."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from safetensors.torch import load_file

import gswa_plugin
from gswa_plugin.hf import load_processor
from gswa_plugin.integrations.transformers import (
    TrainConfig,
    build_trainer,
    from_pretrained_with_gswa,
    read_gswa_state,
    smoke,
    train,
    unwrap,
)
from gswa_plugin.integrations.transformers.data import ConversationCollator, ConversationDataset
from gswa_plugin.integrations.transformers.trainer import EXTRA_TRAINABLE_FILE, model_class_for


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads that spin-wait for each
    other made the tiny model's steps 10-100x slower (measured 0.085 s vs 0.9-9 s per step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    model_dir = smoke.write_model(root / "model")
    files = smoke.write_data(root / "data", formats=("llava",))
    return root, model_dir, files


def _recipe(setup, out, **args):
    root, model_dir, files = setup
    rec = smoke.smoke_recipe(model_dir, files, out)
    rec["training_args"].update({"per_device_train_batch_size": 4, **args})
    return rec


def _batch(model_dir, files):
    processor = load_processor(model_dir)
    ds = ConversationDataset(files, processor, template="plain")
    return ConversationCollator(processor.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])


def _loss(model, batch):
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def test_train_checkpoint_resume_extract(setup, tmp_path):
    root, model_dir, files = setup
    out_a = tmp_path / "a"
    rec = _recipe(setup, out_a, max_steps=4, save_steps=2)
    trainer = train(TrainConfig.from_dict(rec))
    batch = _batch(model_dir, files)

    # the loss on the training data falls, and the GSWA weights leave uniform
    start = from_pretrained_with_gswa(model_dir, gswa=smoke.SMOKE_GSWA)
    trained = unwrap(trainer.model)
    assert _loss(trained, batch) < _loss(start, batch)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert logged[0]["gswa/max_min_ratio"] == pytest.approx(1.0)  # identity at the start
    assert logged[-1]["gswa/max_min_ratio"] > 1.01
    assert logged[-1]["gswa/entropy_rel"] < 1.0
    weights = gswa_plugin.last_weights(trained)
    assert any(float(w.max() / w.min()) > 1.01 for w in weights if w.numel() > 1)

    # checkpoints hold the gswa.* keys in the host's weights and a gswa/ folder
    ckpt = out_a / "checkpoint-2"
    host_state = load_file(str(ckpt / "model.safetensors"))
    assert any(k.startswith("gswa.") for k in host_state)
    assert (ckpt / "gswa" / "gswa.safetensors").is_file()
    assert set(read_gswa_state(ckpt)) == set(trained.gswa.state_dict())

    # resuming from checkpoint-2 ends where the uninterrupted run ended
    out_b = tmp_path / "b"
    out_b.mkdir()
    shutil.copytree(ckpt, out_b / "checkpoint-2")
    rec_b = _recipe(setup, out_b, max_steps=4, save_steps=2)
    resumed = train(TrainConfig.from_dict(rec_b), resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    # steps 3 and 4 ran again after the resume and saw the same losses as the uninterrupted run
    losses_a = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    losses_b = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    assert sorted(losses_b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert losses_b[step] == pytest.approx(losses_a[step], rel=1e-6)
    a = trained.gswa.state_dict()
    b = unwrap(resumed.model).gswa.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)

    # the extracted GSWA weights in a fresh host reproduce the trained model's logits
    fresh = model_class_for(model_dir).from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    gswa_plugin.load(fresh, out_a / "gswa")
    fresh.eval()
    trained.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, trained(**batch).logits)
        reloaded = from_pretrained_with_gswa(out_a, dtype=torch.float32, attn_implementation="eager").eval()
        torch.testing.assert_close(reloaded(**batch).logits, trained(**batch).logits)


def test_gswa_learning_rate_has_its_own_group(setup, tmp_path):
    rec = _recipe(setup, tmp_path / "o")
    rec["freeze"] = "gswa+projector"
    rec["gswa_learning_rate"] = 0.123
    trainer = build_trainer(TrainConfig.from_dict(rec))
    opt = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in opt.param_groups:
        kinds = {names[id(p)].split(".")[0] for p in group["params"]}
        if kinds == {"gswa"}:
            assert group["lr"] == 0.123
        else:
            assert "gswa" not in kinds and group["lr"] == rec["training_args"]["learning_rate"]
    n_groups = sum(1 for g in opt.param_groups if g["lr"] == 0.123)
    assert n_groups >= 1
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(p) for p in trainer.model.parameters() if p.requires_grad}


def test_lora_gradient_checkpointing_bf16_autocast(setup, tmp_path):
    root, model_dir, files = setup
    out = tmp_path / "lora"
    rec = _recipe(setup, out, max_steps=2, save_steps=2, bf16=True, gradient_checkpointing=True,
                  gradient_checkpointing_kwargs={"use_reentrant": False}, learning_rate=0.01)
    rec["freeze"] = "gswa+projector"
    rec["lora"] = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}
    cfg = TrainConfig.from_dict(rec)
    trainer = build_trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    lora = {n for n in before if "lora_B" in n}
    assert lora and lora <= changed
    assert all(".language_model." in n for n in lora)  # never the vision tower or GSWA
    assert any(".gswa." in n for n in changed) and any("multi_modal_projector" in n for n in changed)
    assert not any(("language_model" in n or "vision_tower" in n) and "lora_" not in n for n in changed)
    trainer.save_model()
    extra = load_file(str(out / EXTRA_TRAINABLE_FILE))
    assert any(k.startswith("gswa.") for k in extra) and any("multi_modal_projector" in k for k in extra)
    assert (out / "gswa" / "gswa.safetensors").is_file()
    saved = load_file(str(out / "gswa" / "gswa.safetensors"))
    base = unwrap(trainer.model)
    for k, v in base.gswa.state_dict().items():
        torch.testing.assert_close(saved[k], v.detach().cpu())


def test_from_pretrained_with_gswa_refuses_weights_that_do_not_fit(setup, tmp_path):
    root, model_dir, files = setup
    model = from_pretrained_with_gswa(model_dir, gswa=smoke.SMOKE_GSWA)
    model.save_pretrained(tmp_path / "m")
    gswa_plugin.save(model, tmp_path / "m" / "gswa")
    wrong = copy.deepcopy(smoke.SMOKE_GSWA)
    wrong["hidden_size"] = 64
    with pytest.raises(gswa_plugin.CheckpointError, match="do not fit"):
        from_pretrained_with_gswa(tmp_path / "m", gswa=wrong)


def test_resume_restores_trained_host_weights(setup, tmp_path):
    """transformers writes InternVL under its original key names; resuming must still bring the
    trained projector back (the Trainer's plain load_state_dict would silently keep the base)."""
    out = tmp_path / "proj"
    rec = _recipe(setup, out, max_steps=2, save_steps=2, learning_rate=0.05)
    rec["freeze"] = "gswa+projector"
    trained = unwrap(train(TrainConfig.from_dict(rec)).model)
    fresh_trainer = build_trainer(TrainConfig.from_dict(rec))
    fresh = unwrap(fresh_trainer.model)
    proj_t = trained.model.multi_modal_projector.linear_1.weight
    assert not torch.equal(fresh.model.multi_modal_projector.linear_1.weight, proj_t)
    fresh_trainer._load_from_checkpoint(str(out / "checkpoint-2"))
    for (n, a), (_, b) in zip(trained.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
