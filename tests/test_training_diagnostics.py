"""Weight statistics and failure signatures (gswa_plugin.tools.diagnostics)."""

from __future__ import annotations

import math

import pytest
import torch

from gswa_plugin.tools.diagnostics import Thresholds, failure_signatures, grad_norm, signature_names, weight_stats


def test_uniform_weights_are_uniform():
    stats = weight_stats([torch.ones(4), torch.ones(6), torch.ones(1)])
    assert stats["images"] == 2  # the single-view image carries no weighting
    assert stats["entropy_rel"] == pytest.approx(1.0)
    assert stats["max_min_ratio"] == pytest.approx(1.0)
    assert stats["top_share_excess"] == pytest.approx(0.0, abs=1e-7)
    assert signature_names(failure_signatures(stats)) == ["uniform"]


def test_one_tile_dominance():
    w = torch.tensor([3.97, 0.01, 0.01, 0.01])
    stats = weight_stats([w])
    assert stats["top_share"] == pytest.approx(3.97 / 4)
    assert stats["max_min_ratio"] == pytest.approx(397.0)
    assert stats["entropy_rel"] < 0.2
    assert signature_names(failure_signatures(stats)) == ["tile_dominance"]


def test_thumbnail_dominance_and_vanishing_gradients():
    stats = weight_stats([torch.tensor([1.2, 0.8])], thumbnail_weights=[20.0])
    assert stats["thumbnail_ratio"] == pytest.approx(20.0)
    p = torch.nn.Parameter(torch.ones(3))
    assert grad_norm([p]) is None
    p.grad = torch.zeros(3)
    stats["grad_norm"] = grad_norm([p])
    assert signature_names(failure_signatures(stats)) == ["thumbnail_dominance", "vanishing_gradients"]


def test_healthy_weights_raise_nothing_and_thresholds_apply():
    stats = weight_stats([torch.tensor([1.5, 1.0, 0.5, 1.0])])
    assert failure_signatures(stats) == []
    assert 0 < stats["entropy_rel"] < 1
    assert stats["max_min_ratio"] == pytest.approx(3.0)
    strict = Thresholds(tile_dominance_share=0.1)
    assert signature_names(failure_signatures(stats, strict)) == ["tile_dominance"]


def test_zero_weight_gives_infinite_ratio_not_an_error():
    stats = weight_stats([torch.tensor([2.0, 0.0])])
    assert math.isinf(stats["max_min_ratio"])
    assert stats["entropy_rel"] == pytest.approx(0.0)


def test_no_multi_tile_image():
    assert weight_stats([torch.ones(1)]) == {"images": 0.0}
    assert failure_signatures({"images": 0.0}) == []


def test_callback_logs_statistics_and_warns_on_signatures(internvl_inputs, caplog):
    """The TrainerCallback on a real forward/backward of the tiny InternVL with GSWA enabled."""
    from types import SimpleNamespace

    import gswa_plugin
    from gswa_plugin.integrations.transformers.callback import GSWADiagnosticsCallback
    from gswa_plugin.testing.tiny import tiny_internvl

    model = tiny_internvl(image_size=56)
    gswa_plugin.enable(model, {"hidden_size": 32, "num_heads": 2})
    out = model(**internvl_inputs, labels=internvl_inputs["input_ids"])
    out.loss.backward()
    cb = GSWADiagnosticsCallback(uniform_after_steps=5, warn_every_steps=10)
    state = SimpleNamespace(global_step=1)
    cb.on_pre_optimizer_step(None, state, None, model=model)
    cb.on_step_end(None, state, None, model=model)
    assert cb.latest["gswa/images"] == 2 and cb.latest["gswa/entropy_rel"] == pytest.approx(1.0)
    assert cb.latest["gswa/grad_norm"] > 0
    assert cb.warnings == []  # uniform at step 1 is the identity start, not a failure
    state.global_step = 5
    with caplog.at_level("WARNING", logger="gswa_plugin.integrations.transformers"):
        cb.on_step_end(None, state, None, model=model)
    assert [line.split(":")[0] for _, line in cb.warnings] == ["uniform"]
    assert "GSWA step 5: uniform" in caplog.text
    for p in model.gswa.parameters():
        p.grad = torch.zeros_like(p)
    state.global_step = 6
    cb.on_pre_optimizer_step(None, state, None, model=model)
    cb.on_step_end(None, state, None, model=model)
    assert [line.split(":")[0] for _, line in cb.warnings] == ["uniform", "vanishing_gradients"]  # uniform: rate-limited
    logs = {"loss": 1.0}
    cb.on_log(None, state, None, logs=logs)
    assert logs["gswa/grad_norm"] == 0.0 and logs["loss"] == 1.0
