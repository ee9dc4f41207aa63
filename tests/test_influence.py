"""The influence check: how far a peaked weighting moves the next-token distribution, per mode."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

import gswa_plugin
from gswa_plugin import NotEnabledError
from gswa_plugin.cli import app
from gswa_plugin.tools.influence import compare_modes, measure_influence, peaked_weights

SMALL = {"hidden_size": 32, "num_heads": 4}


def test_peaked_weights_keep_mean_one():
    w = peaked_weights(4, peak_tile=2, ratio=10.0)
    assert torch.isclose(w.mean(), torch.tensor(1.0))
    assert int(w.argmax()) == 2 and torch.isclose(w[2] / w[0], torch.tensor(10.0))
    assert torch.equal(peaked_weights(1), torch.ones(1))
    assert int(peaked_weights(3, peak_tile=7).argmax()) == 2  # clamped to the last tile


def test_modes_inside_attention_move_the_answer_more_than_embed(internvl_model, internvl_inputs):
    results = {r.mode: r for r in compare_modes(internvl_model, internvl_inputs, SMALL)}
    assert set(results) == {"embed", "value", "attn_bias"}
    for r in results.values():
        assert r.kl > 0 and r.max_logit_change > 0 and r.logit_scale > 0
    # the pre-norm language model largely normalises a scalar on the embeddings away
    assert results["value"].kl > 3 * results["embed"].kl
    assert results["attn_bias"].kl > 3 * results["embed"].kl
    assert not gswa_plugin.is_enabled(internvl_model)


def test_ratio_one_moves_nothing_and_trained_weights_are_restored(internvl_model, internvl_inputs):
    handle = gswa_plugin.enable(internvl_model, {**SMALL, "mode": "value"})
    with torch.no_grad():
        handle.module.scorer.query.weight.fill_(0.5)
    r = measure_influence(internvl_model, internvl_inputs, ratio=1.0)
    assert r.mode == "value" and r.kl == 0.0 and r.max_logit_change == 0.0
    compare_modes(internvl_model, internvl_inputs, modes=("embed",))
    after = gswa_plugin.handle.get_handle(internvl_model)
    assert after.config.mode == "value"
    assert torch.all(after.module.scorer.query.weight == 0.5)


def test_influence_needs_gswa_enabled(internvl_model, internvl_inputs):
    with pytest.raises(NotEnabledError, match="enable"):
        measure_influence(internvl_model, internvl_inputs)


def test_cli_influence_on_the_tiny_model():
    """The printed measurement: finite, non-negative, and the peaked weighting moves the answer."""
    args = ["influence", "--model", "tiny", "--image", "coffee", "--mode", "attn_bias"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # wide enough that no cell wraps
    assert result.exit_code == 0, result.output
    lines = [line.strip().strip("│┃") for line in result.output.splitlines() if line.lstrip().startswith(("│", "┃"))]
    header, *rows = [[c.strip() for c in line.split("│" if "│" in line else "┃")] for line in lines]
    assert header == ["mode", "KL (nats)", "max |logit change|", "logit scale", "top-1 changed"], result.output
    assert len(rows) == 1 and rows[0][0] == "attn_bias", result.output
    kl, max_change, scale = (float(c) for c in rows[0][1:4])
    top1 = rows[0][4]
    values = {"KL": kl, "max |logit change|": max_change, "logit scale": scale}
    assert all(math.isfinite(v) and v >= 0 for v in values.values()), values
    # tile 0 ten times heavier moves the next-token distribution in attn_bias (KL 8e-4 on this model)
    assert kl > 0 and max_change > 0 and scale > 0, values
    assert top1.endswith("%") and 0 <= float(top1[:-1]) <= 100, top1


def test_cli_influence_bad_inputs_are_clear():
    result = CliRunner().invoke(app, ["influence", "--model", "no/such/dir", "--image", "coffee"])
    assert result.exit_code == 2 and "--model 'no/such/dir': no such directory" in result.output
    result = CliRunner().invoke(app, ["influence", "--model", "tiny", "--image", "coffee", "--mode", "bias"])
    assert result.exit_code == 2 and "`mode` must be one of" in result.output
