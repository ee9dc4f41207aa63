"""The question-aware variants (``text_guided``, ``text_cross_attn``): contract, compatibility,
and that the request's text is what moves the weights.

Every check runs on the tiny real hosts of ``tests/host_cases`` through the public contract
(identity at initialisation bit-exact including ``generate``, exact weighting, layout,
save/load), plus ``disable`` bit-exact with a non-identity question-aware GSWA.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import gswa_plugin
from gswa_plugin.config import MODES
from gswa_plugin.errors import LayoutError
from gswa_plugin.handle import get_handle
from gswa_plugin.testing.contract import PEAKED
from gswa_plugin.testing.tiny import tiny_tokenizer

from .host_cases import all_cases
from .host_cases.internvl import CASE as INTERNVL

TEXT_VARIANTS = ("text_guided", "text_cross_attn")
CASES = {c.id: c for c in all_cases()}
#: ``text_guided`` on every host case; ``text_cross_attn`` (the same class with thumbnail-only
#: blocks, and the same text path) on the native InternVL only, to keep the file CI-sized.
VARIANT_CASES = [(v, c) for v in TEXT_VARIANTS for c in sorted(CASES) if v == "text_guided" or c == "internvl"]


@pytest.mark.parametrize(("variant", "case_id"), VARIANT_CASES)
def test_contract_holds_for_the_question_aware_variants(case_id, variant):
    case = CASES[case_id]
    case = dataclasses.replace(case, config={**case.config, "variant": variant})
    report = case.check(["identity", "exact_weighting", "layout", "save_load"])
    assert report.passed, str(report)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(("variant", "case_id"), VARIANT_CASES)
def test_disable_restores_the_host_bit_exactly(case_id, variant):
    case = CASES[case_id]
    model, inputs = case.make_model(), case.make_inputs()
    base = _logits(model, inputs)
    cfg = {**case.config, **PEAKED, "variant": variant}
    if case.adapter:
        cfg["adapter"] = case.adapter
    gswa_plugin.enable(model, cfg)
    assert not torch.equal(_logits(model, inputs), base)
    gswa_plugin.disable(model)
    assert torch.equal(_logits(model, inputs), base)


def _question(inputs, word_from: str, word_to: str):
    """The same inputs with one text word swapped (the image tokens untouched)."""
    tok = tiny_tokenizer()
    a, b = tok.convert_tokens_to_ids(word_from), tok.convert_tokens_to_ids(word_to)
    ids = inputs["input_ids"].clone()
    assert (ids == a).any(), f"no '{word_from}' in the prompt"
    ids[ids == a] = b
    return {**inputs, "input_ids": ids}


def _internvl(mode="embed", **cfg):
    model, inputs = INTERNVL.make_model(), INTERNVL.make_inputs()
    gswa_plugin.enable(model, {**PEAKED, "variant": "text_guided", "mode": mode, **cfg})
    return model, inputs


@pytest.mark.parametrize("mode", MODES)
def test_the_question_moves_the_weights_and_the_answer_in_every_mode(mode):
    model, inputs = _internvl(mode)
    first = _logits(model, inputs)
    w1 = gswa_plugin.last_weights(model)
    other = _question(inputs, "describe", "what")
    second = _logits(model, other)
    w2 = gswa_plugin.last_weights(model)
    # image 0's prompt changed: its weights move; image 1's prompt did not: its weights stay
    assert not torch.allclose(w1[0], w2[0])
    assert torch.equal(w1[1], w2[1])
    assert not torch.equal(first[0], second[0])
    for w in w2:
        assert abs(float(w.double().mean()) - 1.0) < 1e-5


def test_image_placeholders_and_padding_do_not_enter_the_text():
    from gswa_plugin.adapters._text import pooled_text

    model = INTERNVL.make_model()
    tok = tiny_tokenizer()
    ctx = model.config.image_token_id
    words = tok.convert_tokens_to_ids(["what", "is", "the", "square"])
    short = torch.tensor([[ctx, ctx, *words]])
    long = torch.tensor([[ctx] * 7 + words + [0]])
    mask = torch.tensor([[1] * 11 + [0]])
    assert torch.allclose(pooled_text(model, short), pooled_text(model, long, mask), atol=1e-6)


def test_generate_computes_the_weights_once_at_prefill():
    model, inputs = _internvl("value")
    seen = []
    handle = get_handle(model)
    original = handle.process

    def counting(*args, **kwargs):
        seen.append(1)
        return original(*args, **kwargs)

    handle.process = counting
    model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert len(seen) == 1
    w_gen = gswa_plugin.last_weights(model)
    _logits(model, inputs)
    assert all(torch.equal(a, b) for a, b in zip(w_gen, gswa_plugin.last_weights(model)))


def test_a_call_without_text_is_an_error_unless_gswa_is_the_identity():
    model, inputs = _internvl()
    with pytest.raises(LayoutError, match="carries no `input_ids`"):
        with gswa_plugin.tiles(model, [5, 4]):
            model.get_image_features(pixel_values=inputs["pixel_values"])
    ident = INTERNVL.make_model()
    gswa_plugin.enable(ident, {"variant": "text_guided", "hidden_size": 32, "num_heads": 4})
    plain = INTERNVL.make_model()
    got = ident.get_image_features(pixel_values=inputs["pixel_values"])
    want = plain.get_image_features(pixel_values=inputs["pixel_values"])
    got, want = (getattr(x, "pooler_output", x) for x in (got, want))
    assert torch.equal(torch.cat(list(got)), torch.cat(list(want)))


def test_more_samples_than_one_per_image_is_a_clear_error():
    model, inputs = _internvl()
    two = {**inputs, "pixel_values": inputs["pixel_values"][:5]}
    with pytest.raises(LayoutError):
        _logits(model, two)


def test_the_text_gets_gradients_and_training_moves_the_text_query():
    model, inputs = _internvl(identity_init=True)
    model.train()
    out = model(**inputs, labels=inputs["input_ids"].clone())
    out.loss.backward()
    scorer = model.gswa.scorer
    assert scorer.text_query.weight.grad is not None and scorer.text_query.weight.grad.abs().sum() > 0


def test_the_text_path_sends_no_gradient_into_the_hosts_embedding_table():
    """The pooled text is read from a detached table: a loss of GSWA's weights alone trains GSWA's
    text projection and leaves the host's input embeddings without a gradient (with the table
    attached, its backward was a dense gradient of the whole table: issue 18's training cost)."""
    model, inputs = _internvl()
    model.train()
    got = []
    hook = model.gswa.register_forward_hook(lambda m, a, out: got.append(out))
    model(**inputs)
    hook.remove()
    weights = [t for t in torch.utils._pytree.tree_leaves(got) if isinstance(t, torch.Tensor) and t.requires_grad]
    assert weights, "GSWA's module returned nothing with a gradient"
    sum((w.float() * torch.linspace(0, 1, w.numel()).view_as(w)).sum() for w in weights).backward()
    assert model.gswa.scorer.text_query.weight.grad.abs().sum() > 0
    assert model.get_input_embeddings().weight.grad is None


def test_gswa_visualize_draws_two_questions_side_by_side(tmp_path, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    from gswa_plugin.cli import app
    from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor
    from gswa_plugin.tools import hosts
    from gswa_plugin.tools import visualize as vis

    monkeypatch.setattr(hosts, "tiny_default", lambda max_tiles=None: (tiny_internvl(image_size=56), tiny_internvl_processor(56, max_tiles or 6)))
    cfg = tmp_path / "gswa.yaml"
    cfg.write_text("gswa:\n  variant: text_guided\n  identity_init: false\n  temperature: 0.1\n")
    sample_image("coffee").save(tmp_path / "coffee.png")
    questions = ["what colour is the cup ?", "what is in the picture ?"]
    args = ["visualize", "--image", str(tmp_path / "coffee.png"), "--gswa", str(cfg), "--out", str(tmp_path / "maps"), "--width", "300"]
    for q in questions:
        args += ["--question", q]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    picture = Image.open(tmp_path / "maps" / "coffee.png")
    assert picture.width == 2 * 300 + 16
    net, proc, _ = hosts.load_host(None, str(cfg))
    _, (first, second) = vis.question_weights(net, proc, Image.open(tmp_path / "coffee.png"), questions, width=300)
    assert first.tile_weights != second.tile_weights  # the question moves the weights of the same photograph
    assert abs(sum(first.tile_weights) / len(first.tile_weights) - 1) < 1e-5


def test_the_two_needle_images_hold_the_asked_shape_where_the_labels_say():
    import numpy as np

    from benchmarks.needle import task
    from benchmarks.needle import two_needle as tn

    rng = np.random.default_rng(0)
    tile = 28
    seen_asked = set()
    for _ in range(40):
        img, asked, answer, asked_tile, other_tile = tn.make_image(rng, tile)
        if asked_tile < 0:
            assert answer == len(task.COLOURS) and other_tile == -1
            continue
        seen_asked.add(asked)
        assert asked_tile != other_tile
        r, c = divmod(asked_tile, task.GRID)
        cx, cy = c * tile + tile // 2, r * tile + tile // 2
        # the needle is large and centred enough that the tile's centre pixel has its colour
        box = np.asarray(img)[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3)
        want = np.asarray(task.COLOURS[task.answer_words()[answer]])
        assert (np.abs(box - want).sum(-1) < 10).any()
    assert seen_asked == {0, 1}
    ids = tn.prompts(1)
    assert ids.shape[0] == 2 and (ids[0] != ids[1]).sum() == 1  # the prompts differ only in the shape word
    # the held-out draw is the one written down, and meets neither the dev seeds nor the used draw
    assert tn.HELD_OUT_SEEDS == tuple(int(s) for s in np.random.default_rng(2618).integers(1_000_000, 10_000_000, 8))
    assert tn.HELD_OUT_SEEDS_1825 == tuple(int(s) for s in np.random.default_rng(1825).integers(100_000, 1_000_000, 5))
    used = set(tn.DEV_SEEDS) | set(tn.HELD_OUT_SEEDS_STOP24) | set(tn.HELD_OUT_SEEDS_1825)
    assert len(set(tn.HELD_OUT_SEEDS)) == 8 and not set(tn.HELD_OUT_SEEDS) & used
    frozen = tuple(int(s) for s in np.random.default_rng(2619).integers(1_000_000, 10_000_000, 8))
    assert tn.HELD_OUT_SEEDS_FROZEN == frozen and not set(frozen) & (used | set(tn.HELD_OUT_SEEDS))
    assert not set(tn.HELD_OUT_SEEDS_1825) & (set(tn.DEV_SEEDS) | set(tn.HELD_OUT_SEEDS_STOP24))
    # the fourth round's fresh draw meets no dev seed, no used draw and not the unused frozen draw
    budget = tuple(int(s) for s in np.random.default_rng(2620).integers(1_000_000, 10_000_000, 8))
    assert tn.HELD_OUT_SEEDS_BUDGET == budget and len(set(budget)) == 8
    assert not set(budget) & (used | set(tn.HELD_OUT_SEEDS) | set(frozen))
    # the fifth round's fresh draw meets none of them either
    fifth = tuple(int(s) for s in np.random.default_rng(2621).integers(1_000_000, 10_000_000, 8))
    assert tn.HELD_OUT_SEEDS_5 == fifth and len(set(fifth)) == 8
    assert not set(fifth) & (used | set(tn.HELD_OUT_SEEDS) | set(frozen) | set(budget))
    sixth = tuple(int(s) for s in np.random.default_rng(2622).integers(1_000_000, 10_000_000, 8))
    assert tn.HELD_OUT_SEEDS_6 == sixth and len(set(sixth)) == 8
    assert not set(sixth) & (used | set(tn.HELD_OUT_SEEDS) | set(frozen) | set(budget) | set(fifth))
    # the sixth round's settings give the mix to the question-aware cells only
    assert tn.cell_settings(tn.SETTINGS_ROUND6, "text_cross_attn", True)["budget_mix"] == 0.5
    assert tn.cell_settings(tn.SETTINGS_ROUND6, "self_attn", True) == tn.cell_settings(tn.SETTINGS_ROUND5, "self_attn", True)
    assert tn.cell_settings(tn.SETTINGS_ROUND6, "no GSWA", True) == tn.cell_settings(tn.SETTINGS_ROUND5, "no GSWA", True)


def test_two_needle_eight_colour_palette():
    """``colours: 8`` (issue 18, fifth round): the needles take any of eight colours, each answered
    by its own word of the tiny vocabulary; 4 draws the earlier rounds' images and answers."""
    import numpy as np

    from benchmarks.needle import task
    from benchmarks.needle import two_needle as tn

    rows = tn.palette(8)
    words = [w for _, _, w in rows]
    assert len(set(words)) == 8 and task.NO_NEEDLE not in words
    assert len({rgb for _, rgb, _ in rows}) == 8
    ids = tn.answer_ids(8)
    assert len(set(ids.tolist())) == 9 and task._tokenizer().unk_token_id not in ids.tolist()
    assert torch.equal(tn.answer_ids(4), task.answer_ids())
    with pytest.raises(ValueError, match="2 to 8 colours"):
        tn.palette(9)
    tile, seen = 28, set()
    rng = np.random.default_rng(5)
    for _ in range(60):
        img, asked, answer, asked_tile, _ = tn.make_image(rng, tile, 0.0, colours=8)
        if asked_tile < 0:
            assert answer == 8
            continue
        seen.add(answer)
        r, c = divmod(asked_tile, task.GRID)
        box = np.asarray(img)[r * tile + tile // 2 - 2 : r * tile + tile // 2 + 3, c * tile + tile // 2 - 2 : c * tile + tile // 2 + 3]
        assert (np.abs(box.reshape(-1, 3) - np.asarray(rows[answer][1])).sum(-1) < 10).any()
    assert seen & {4, 5, 6, 7}, "no needle took one of the four extra colours"
    four = tn.make_data(6, seed=9, asked_absent=0.25)
    default = tn.make_data(6, seed=9, asked_absent=0.25, colours=4)
    assert torch.equal(four.pixel_values, default.pixel_values) and torch.equal(four.answer, default.answer)


def test_two_needle_images_can_leave_the_asked_needle_out():
    """``asked_absent`` (issue 18, third round): the asked needle's tile holds no needle colour at its
    centre, the other needle stays, the answer is ``tile``; 0 draws the earlier rounds' images."""
    import numpy as np

    from benchmarks.needle import task
    from benchmarks.needle import two_needle as tn

    a, b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(10):
        assert np.array_equal(np.asarray(tn.make_image(a, 28)[0]), np.asarray(tn.make_image(b, 28, 0.0)[0]))
    rng, tile, seen = np.random.default_rng(1), 28, 0
    saturated = np.asarray(list(task.COLOURS.values()))
    for _ in range(30):
        img, _, answer, asked_tile, other_tile = tn.make_image(rng, tile, asked_absent=1.0)
        assert asked_tile == -1 and answer == len(task.COLOURS)
        if other_tile < 0:
            continue
        seen += 1
        r, c = divmod(other_tile, task.GRID)
        centre = np.asarray(img)[r * tile + tile // 2, c * tile + tile // 2]
        assert (np.abs(saturated - centre).sum(-1) < 10).any()  # the other needle is still drawn
    assert seen > 15


def test_gswa_train_moves_the_text_query(tmp_path):
    """A tiny `gswa train` run (the console command, transformers Trainer) with `text_guided`:
    the text reaches GSWA in training and its text query leaves zero."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from gswa_plugin.integrations.transformers import read_gswa_state, smoke

    model_dir = smoke.write_model(tmp_path / "model")
    files = smoke.write_data(tmp_path / "data", formats=("llava",))
    out = tmp_path / "out"
    recipe = smoke.smoke_recipe(model_dir, files, out)
    recipe["gswa"] = {**recipe.get("gswa", {}), "variant": "text_guided", "mode": "value"}
    recipe["training_args"].update({"max_steps": 4, "save_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 0.01})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    exe = Path(sys.executable).with_name("gswa")
    cmd = [str(exe) if exe.exists() else shutil.which("gswa") or "gswa", "train", str(path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trained = read_gswa_state(out / "checkpoint-4")
    key = next(k for k in trained if k.endswith("text_query.weight"))
    assert float(trained[key].float().abs().max()) > 0


#: The compatibility matrix's settings (tests/test_compat.py), run with ``text_guided`` on the
#: native InternVL in every mode.
def _compat_cells():
    from gswa_plugin.testing.compat import SETTINGS

    return [(m, s.name) for m in MODES for s in SETTINGS]


@pytest.mark.parametrize(("mode", "setting"), _compat_cells())
def test_compatibility_matrix_holds_for_text_guided(mode, setting, tmp_path):
    from .test_compat import CHECKS, _grads

    case = dataclasses.replace(INTERNVL, config={**INTERNVL.config, "variant": "text_guided"})
    if setting.startswith("gc-"):  # the matrix caches its reference gradients per adapter (self_attn)
        base = _grads(case, mode, None)
        got = _grads(case, mode, setting[3:])
        assert all(g is not None for g in base.values()) and all(g is not None for g in got.values())
        for n in base:
            torch.testing.assert_close(got[n], base[n], rtol=1e-5, atol=1e-6)
        return
    CHECKS[setting](case, mode, tmp_path)


def test_the_importance_term_reaches_only_gswa_in_the_two_needle_task():
    """``importance_weight`` in the two-needle task (issue 18): the term changes the gradients of
    GSWA's parameters (text query included) and of nothing else, and a short run records where the
    answer loss's per-tile gradient points (``grad_asked`` / ``grad_other``)."""
    from dataclasses import replace

    from benchmarks.needle import task
    from benchmarks.needle import two_needle as tn

    data = tn.make_data(8, seed=7)
    prompt = tn.prompts(1)
    grads = {}
    for weight in (0.0, 1.0):
        cfg = replace(task.RunConfig(), variant="text_guided", seed=3, text_layers=1, importance_weight=weight)
        model, _ = task.build_model(cfg)
        gswa = [p for n, p in model.named_parameters() if n.startswith("gswa.")]
        term = task.ImportanceTerm(model, cfg, gswa)
        logits = tn._forward(model, prompt[data.asked], data.pixel_values)
        term.backward(torch.nn.functional.cross_entropy(logits[:, task.answer_ids()], data.answer))
        term.hook.remove()
        assert term.last is not None and term.last[1].shape == (len(data) * 10,)  # dL/dw of every view
        grads[weight] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    changed = [n for n in grads[0.0] if not torch.equal(grads[0.0][n], grads[1.0][n])]
    assert changed and all(n.startswith("gswa.") for n in changed)
    assert any("text_query" in n for n in changed)
    cfg = replace(task.RunConfig(), variant="text_guided", seed=3, steps=3, text_layers=1, importance_weight=1.0)
    res = tn.train(cfg, data, data)
    assert 0.0 <= res["grad_asked"] + res["grad_other"] <= 1.0
    assert set(res["hit_by_question"]) == set(tn.ASKED)


@pytest.mark.parametrize("variant", ["text_guided", "text_cross_attn"])
def test_score_input_reaches_the_question_aware_variants(variant):
    """``score_input: squared_deviation`` changes what the text variants' keys read (issue 18), and
    an untrained one is still the identity for any text; with the query's text part at zero the
    logits are the image-only scorer's."""
    from types import SimpleNamespace

    from gswa_plugin import weighting as W

    base = {"hidden_size": 16, "num_heads": 2, "mlp_ratio": 2.0, "dropout": 0.0, "num_layers": 1}
    tokens, mask, text = torch.randn(3, 5, 8), torch.ones(3, 4, dtype=torch.bool), torch.randn(3, 6)
    out = {}
    for score_input in ("summary", "squared_deviation"):
        cfg = SimpleNamespace(**base, identity_init=False, score_input=score_input)
        torch.manual_seed(0)
        scorer = W.TEXT_VARIANTS[variant](8, cfg, text_dim=6)
        out[score_input] = scorer(tokens, mask, text)
        torch.manual_seed(0)
        image_only = W.BUILTIN_VARIANTS[variant.replace("text_guided", "self_attn").replace("text_", "")](8, cfg)
        torch.nn.init.zeros_(scorer.text_query.weight)
        torch.nn.init.zeros_(scorer.text_query.bias)
        torch.testing.assert_close(scorer(tokens, mask, text), image_only(tokens, mask))
        ident = W.TEXT_VARIANTS[variant](8, SimpleNamespace(**base, identity_init=True, score_input=score_input), text_dim=6)
        assert torch.equal(ident(tokens, mask, text), torch.zeros(3, 2, 4))
    assert not torch.allclose(out["summary"], out["squared_deviation"])


def test_two_needle_misses_breaks_a_run_down_by_needle_colour(capsys):
    """``benchmarks/needle/two_needle_misses.py`` (issue 18): a tiny run on a development seed gives,
    per question, hit rates by colour pair and where the answer loss's gradient points; a seed
    outside the development set is refused."""
    import json

    from benchmarks.needle import two_needle_misses as tm

    tm.main(["101", "--set", "steps=2", "--set", "train_images=16", "--set", "eval_images=40"])
    out = json.loads(capsys.readouterr().out)
    for word in ("square", "circle"):
        pairs = out[word]["hit_by_colours"]
        assert pairs and all(" vs " in k and v[0] >= 1 and 0 <= v[1] <= 1 for k, v in pairs.items())
        assert all(0 <= v <= 1 for v in out[word]["grad_on_asked_by_colour"].values())
    with pytest.raises(SystemExit):
        tm.main(["9580646"])


def test_two_needle_budget_keeps_the_thumbnail_and_the_best_tiles():
    """Fourth round (issue 18): a budget of ``keep`` tokens per image keeps exactly one thumbnail
    token and the ``keep - 1`` tiles with the largest weights (``method: gswa``)."""
    from benchmarks.needle import two_needle as tn
    from gswa_plugin import budget
    from gswa_plugin.layout import TileLayout

    layout = TileLayout((10,), "last")
    weights = torch.tensor([0.2, 3.0, 0.1, 0.5, 2.5, 0.4, 0.9, 0.3, 1.1, 1.0])  # thumbnail last
    feats = torch.randn(10, 4)
    for keep, tiles in ((2, [1]), (3, [1, 4])):
        spec = tn.budget_spec(keep, "gswa", 0)
        sel = budget.select_tokens(
            feats, torch.arange(10), weights, feats, layout, spec["keep"], spec["method"],
            thumbnail_share=spec["thumbnail_share"],
        )
        assert sel.quotas[9] == 1 and sum(sel.quotas) == keep
        assert [v for v in range(9) if sel.quotas[v]] == tiles
    for keep, tiles in ((1, [1]), (2, [1, 4])):  # without the thumbnail: every token to the tiles
        spec = tn.budget_spec(keep, "gswa", 0, thumbnail=False)
        sel = budget.select_tokens(
            feats, torch.arange(10), weights, feats, layout, spec["keep"], spec["method"],
            thumbnail_share=spec["thumbnail_share"],
        )
        assert sel.quotas[9] == 0 and [v for v in range(9) if sel.quotas[v]] == tiles


def test_two_needle_task_evaluates_and_trains_under_a_budget():
    """``budget_eval`` / ``budget_train`` of the two-needle task run for a GSWA cell and for the host
    without GSWA (an identity GSWA for the budget, removed afterwards), in a few steps."""
    from dataclasses import replace

    from benchmarks.needle import task
    from benchmarks.needle import two_needle as tn

    data = tn.make_data(8, seed=7, asked_absent=0.25)
    for mode, variant in (("value", "text_guided"), ("none", "self_attn")):
        for budget_train in (None, 2):
            cfg = replace(task.RunConfig(), mode=mode, variant=variant, seed=3, steps=2, text_layers=1, eval_every=0)
            res = tn.train(cfg, data, data, budget_keeps=[2, 3], budget_train=budget_train)
            assert set(res["budget"]) == {f"{m}@{k}" for k in (2, 3) for m in tn.BUDGET_METHODS}
            for got in res["budget"].values():
                assert all(0.0 <= got[k] <= 1.0 for k in ("accuracy", "kept_asked", "kept_other"))
            if mode == "none":  # identity GSWA: the weights are all 1, so gswa and uniform keep the same tiles
                assert res["budget"]["gswa@2"] == res["budget"]["uniform@2"]


def test_two_needle_budget_mix_trains_some_steps_under_the_budget(monkeypatch):
    """``budget_mix`` of the two-needle task: the chosen fraction of the steps runs under the
    evaluation budget (so 1.0 trains differently from 0.0, which is the run without it, bit for bit),
    those steps leave GSWA alone unless ``budget_mix_gswa``, and the budget is gone when the model is
    evaluated with every token."""
    from dataclasses import replace

    from benchmarks.needle import task
    from benchmarks.needle import two_needle as tn
    from gswa_plugin import api

    data = tn.make_data(8, seed=7, asked_absent=0.25)
    cfg = replace(task.RunConfig(), mode="value", variant="text_guided", seed=3, steps=3, text_layers=1, eval_every=0)
    assert len(tn.budget_mix_steps(cfg, 0.5)) == 2 and tn.budget_mix_steps(cfg, 0.5) == tn.budget_mix_steps(cfg, 0.5)
    assert tn.budget_mix_steps(cfg, 0.0) == frozenset() and tn.budget_mix_steps(cfg, 1.0) == {0, 1, 2}
    calls, seen, params = [], [], []
    set_budget, evaluate = api.set_budget, tn.evaluate

    def record_set(model, budget):
        calls.append(budget)
        return set_budget(model, budget)

    def record_eval(model, handle, *args, **kwargs):
        seen.append(api.get_handle(model).config.budget)
        for gswa in (False, True):
            ps = [p.detach().flatten() for n, p in model.named_parameters() if n.startswith("gswa.") == gswa]
            params.append(torch.cat(ps).clone())
        return evaluate(model, handle, *args, **kwargs)

    monkeypatch.setattr(api, "set_budget", record_set)
    monkeypatch.setattr(tn, "evaluate", record_eval)
    res = {None: tn.train(cfg, data, data), **{mix: tn.train(cfg, data, data, budget_mix=mix) for mix in (0.0, 1.0)}}
    drop = lambda r: {k: v for k, v in r.items() if k != "wall_s"}
    host, gswa = params[0::2], params[1::2]  # per run: the host's parameters, GSWA's
    assert drop(res[None]) == drop(res[0.0]) and torch.equal(host[0], host[1]) and torch.equal(gswa[0], gswa[1])
    assert not torch.allclose(host[2], host[1])  # the host trained on 2-token steps moved elsewhere
    # None / 0.0: set_budget never called; 1.0: the budget once before the first step, removed after
    assert calls == [tn.budget_spec(2, "gswa", 3), None]
    assert len(seen) == 3 and all(b is None or not b.active for b in seen)
    # by default the budget steps (here all) train the host only: GSWA stays as built;
    # budget_mix_gswa=True: they train GSWA too
    built = tn.task.build_model(cfg)[0]
    start = torch.cat([p.detach().flatten() for n, p in built.named_parameters() if n.startswith("gswa.")])
    assert torch.equal(gswa[2], start) and not torch.equal(gswa[0], start)
    tn.train(cfg, data, data, budget_mix=1.0, budget_mix_gswa=True)
    assert not torch.equal(params[-1], start) and not torch.allclose(params[-2], host[1])
    with pytest.raises(ValueError, match="budget_mix"):
        tn.train(cfg, data, data, budget_train=2, budget_mix=0.5)
    # --set budget_mix reaches the cells trained with every token only (the others keep their rows)
    mixed = {**tn.SETTINGS_ROUND5, "budget_mix": 0.5}
    assert tn.cell_settings(mixed, "text_guided", True) == mixed
    assert tn.cell_settings(mixed, "self_attn", True) == tn.cell_settings(tn.SETTINGS_ROUND5, "self_attn", True)
    assert tn.cell_settings(mixed, "no GSWA", False) == tn.SETTINGS_ROUND5
