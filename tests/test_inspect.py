"""Inspection experiments (gswa_plugin.tools.inspect): tile removal, ablation, diagnostics.

Everything is checked on what the language model receives (``inputs_embeds`` captured by a
pre-hook) or on its logits, with the tiny native InternVL and the real processor on real
photographs.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import gswa_plugin
from gswa_plugin.errors import ConfigError, LayoutError
from gswa_plugin.tools import inspect as it
from tests.conftest import lm_inputs_embeds

COSINE = {"variant": "cosine", "cosine_temperature": 0.05}


@pytest.fixture(scope="module")
def one_image_inputs(internvl_processor, photos):
    """One real photograph, cut into 2x3 tiles plus a thumbnail (7 views, 4 tokens each)."""
    return dict(
        internvl_processor(
            text=["<IMG_CONTEXT> describe the image"], images=[photos[1].resize((336, 224))], return_tensors="pt"
        )
    )


def _image_rows(model, inputs, embeds):
    """Per batch row, the image-token embeddings ``[tokens, dim]``."""
    mask = inputs["input_ids"] == model.config.image_token_id
    return [embeds[b][mask[b]] for b in range(embeds.shape[0])]


def _tokens_per_view(model):
    return model.config.image_seq_length


def test_k0_reproduces_the_baseline_exactly(internvl_model, internvl_inputs):
    gswa_plugin.enable(internvl_model, COSINE)
    with torch.no_grad():
        base = internvl_model(**internvl_inputs).logits
    for mode in ("zero", "drop"):
        out, removed, feed = it.run_with_removal(internvl_model, internvl_inputs, it.RemovalSpec(k=0, mode=mode))
        assert torch.equal(out.logits, base), mode
        assert removed == [[], []] or removed == []
        assert feed["input_ids"] is internvl_inputs["input_ids"]


@pytest.mark.parametrize("which", ["highest", "lowest"])
def test_zero_mode_zeroes_exactly_the_chosen_tiles(internvl_model, internvl_inputs, which):
    gswa_plugin.enable(internvl_model, COSINE)
    full = lm_inputs_embeds(internvl_model, **internvl_inputs)
    weights = gswa_plugin.last_weights(internvl_model)
    spec = it.RemovalSpec(k=2, which=which)
    with it.removing_tiles(spec) as plugin:
        cut = lm_inputs_embeds(internvl_model, **internvl_inputs)
    tpv = _tokens_per_view(internvl_model)
    for b, (w, full_img, cut_img) in enumerate(
        zip(weights, _image_rows(internvl_model, internvl_inputs, full), _image_rows(internvl_model, internvl_inputs, cut))
    ):
        expect = sorted(torch.sort(w, descending=which == "highest", stable=True).indices[:2].tolist())
        assert plugin.removed[b] == expect
        for v in range(full_img.shape[0] // tpv):
            block = slice(v * tpv, (v + 1) * tpv)
            if v in expect:
                assert torch.count_nonzero(cut_img[block]) == 0
            else:
                assert torch.equal(cut_img[block], full_img[block])
    # text tokens are untouched
    text = internvl_inputs["input_ids"] != internvl_model.config.image_token_id
    assert torch.equal(full[text], cut[text])


def test_threshold_and_similarity_selection(internvl_model, one_image_inputs):
    gswa_plugin.enable(internvl_model, COSINE)
    batch = it.seam_batch(internvl_model, one_image_inputs)
    w = batch.tile_weights()[0]
    assert it.select_tiles(batch, it.RemovalSpec(threshold=1.0)) == [[i for i, x in enumerate(w.tolist()) if x < 1.0]]
    sim = it.tile_similarity(batch)[0]
    top = sorted(torch.sort(sim, descending=True, stable=True).indices[:3].tolist())
    assert it.select_tiles(batch, it.RemovalSpec(k=3, by="similarity")) == [top]
    # cosine weights are a monotone function of the similarity, so both rankings agree
    assert it.select_tiles(batch, it.RemovalSpec(k=3, by="weight")) == [top]
    assert it.select_tiles(batch, it.RemovalSpec(k=99)) == [list(range(w.numel()))]


def test_drop_mode_removes_the_views_and_their_image_tokens(internvl_model, one_image_inputs):
    # identity GSWA (all weights 1): the kept views must reach the LM bit for bit
    gswa_plugin.enable(internvl_model, {"variant": "self_attn", "hidden_size": 32, "num_heads": 4})
    full = lm_inputs_embeds(internvl_model, **one_image_inputs)[0]
    spec = it.RemovalSpec(k=2, which="lowest", mode="drop")  # all weights tie: the first two tiles go
    out, removed, feed = it.run_with_removal(internvl_model, one_image_inputs, spec)
    assert removed == [[0, 1]]
    tpv = _tokens_per_view(internvl_model)
    assert feed["pixel_values"].shape[0] == one_image_inputs["pixel_values"].shape[0] - 2
    assert feed["input_ids"].shape[1] == one_image_inputs["input_ids"].shape[1] - 2 * tpv
    cut = lm_inputs_embeds(internvl_model, **feed)[0]
    ids = one_image_inputs["input_ids"][0]
    keep = torch.ones_like(ids, dtype=torch.bool)
    first = int(torch.nonzero(ids == internvl_model.config.image_token_id)[0])
    keep[first : first + 2 * tpv] = False
    assert torch.equal(cut, full[keep])
    assert out.logits.shape[1] == feed["input_ids"].shape[1]


def test_drop_mode_with_cosine_keeps_the_right_tiles(internvl_model, one_image_inputs):
    gswa_plugin.enable(internvl_model, COSINE)
    batch = it.seam_batch(internvl_model, one_image_inputs)
    expect = sorted(torch.sort(batch.tile_weights()[0], descending=True, stable=True).indices[:3].tolist())
    _, removed, feed = it.run_with_removal(internvl_model, one_image_inputs, it.RemovalSpec(k=3, mode="drop"))
    assert removed == [expect]
    kept = [v for v in range(one_image_inputs["pixel_values"].shape[0]) if v not in expect]
    assert torch.equal(feed["pixel_values"], one_image_inputs["pixel_values"][kept])
    # GSWA then weighs the 3 remaining tiles and the thumbnail
    assert gswa_plugin.last_weights(internvl_model)[0].numel() == 3


def test_drop_on_a_two_image_batch_repads(internvl_model, internvl_inputs):
    gswa_plugin.enable(internvl_model, COSINE)
    _, removed, feed = it.run_with_removal(internvl_model, internvl_inputs, it.RemovalSpec(k=1, mode="drop"))
    tpv = _tokens_per_view(internvl_model)
    counts = (feed["input_ids"] == internvl_model.config.image_token_id).sum(1)
    before = (internvl_inputs["input_ids"] == internvl_model.config.image_token_id).sum(1)
    assert counts.tolist() == [int(c) - tpv for c in before]
    assert (feed["attention_mask"].sum(1) == internvl_inputs["attention_mask"].sum(1) - tpv).all()


def test_bad_specs_are_reported():
    with pytest.raises(ConfigError) as err:
        it.RemovalSpec(k=-1, by="size", which="top", mode="cut")
    assert len(err.value.problems) == 4
    with pytest.raises(ConfigError, match="either k or threshold"):
        it.RemovalSpec(k=2, threshold=0.5)


def test_seam_batch_without_images_is_an_error(internvl_model, internvl_processor):
    gswa_plugin.enable(internvl_model, COSINE)
    inputs = dict(internvl_processor(text=["describe the image"], return_tensors="pt"))
    with pytest.raises(LayoutError, match="never reached"):
        it.seam_batch(internvl_model, inputs)


# --- diagnostics ------------------------------------------------------------------------------
def _checkpoint(model, tmp_path, name, query_scale, heads=4):
    """A saved self_attn GSWA whose scoring query is ``query_scale`` times a random matrix
    (0: the identity start, uniform weights; large with one head: one tile takes everything)."""
    handle = gswa_plugin.enable(model, {"variant": "self_attn", "hidden_size": 32, "num_heads": heads})
    g = torch.Generator().manual_seed(1)
    q = handle.module.scorer.query
    with torch.no_grad():
        q.weight.copy_(torch.randn(q.weight.shape, generator=g) * query_scale)
    out = gswa_plugin.save(model, tmp_path / name)
    gswa_plugin.disable(model)
    return out


@pytest.fixture(scope="module")
def diag_images(photos):
    from gswa_plugin.testing.tiny import sample_image

    return [
        ("coffee", photos[1].resize((336, 224))),
        ("chelsea", sample_image("chelsea").resize((224, 336))),
        ("astronaut", photos[0].resize((336, 168))),
    ]


def test_diagnose_flags_uniform_and_one_tile_and_passes_healthy(internvl_model, internvl_processor, diag_images, tmp_path):
    made = [("uniform", 0.0, 4), ("dominated", 300.0, 1), ("healthy", 0.3, 4)]
    ckpts = {name: _checkpoint(internvl_model, tmp_path, name, s, h) for name, s, h in made}
    found = {}
    for name, path in ckpts.items():
        gswa_plugin.load(internvl_model, path)
        found[name] = it.diagnose_images(internvl_model, internvl_processor, diag_images, progress=False)
        gswa_plugin.disable(internvl_model)
    from gswa_plugin.tools.diagnostics import signature_names

    assert signature_names(found["uniform"].signatures) == ["uniform"]
    assert signature_names(found["dominated"].signatures) == ["tile_dominance"]
    assert found["healthy"].healthy, found["healthy"].stats
    assert found["healthy"].stats["images"] == 3


@pytest.fixture
def fast_default(monkeypatch):
    """The CLI's default model (the tiny built-in InternVL) in its fast 56 px-tile version."""
    from gswa_plugin.testing.tiny import tiny_internvl, tiny_internvl_processor
    from gswa_plugin.tools import hosts

    monkeypatch.setattr(
        hosts, "tiny_default", lambda max_tiles=None: (tiny_internvl(image_size=56), tiny_internvl_processor(56, max_tiles or 6))
    )


def test_gswa_diagnose_cli_exit_codes(tmp_path, diag_images, internvl_model, fast_default):
    from gswa_plugin.cli import app

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, img in diag_images:
        img.save(folder / f"{name}.png")
    uniform = _checkpoint(internvl_model, tmp_path, "uniform", 0.0)
    runner = CliRunner()
    res = runner.invoke(app, ["diagnose", "--gswa", str(uniform), "--image", str(folder), "--fail"])
    assert res.exit_code == 1, res.output
    assert "uniform" in res.output
    res = runner.invoke(app, ["diagnose", "--gswa", str(uniform), "--image", str(folder)])
    assert res.exit_code == 0, res.output
    # the thresholds given on the command line are the ones applied
    res = runner.invoke(app, ["diagnose", "--gswa", str(uniform), "--image", str(folder), "--fail", "--uniform-entropy", "1.01"])
    assert res.exit_code == 0, res.output
    assert "no failure signature found" in res.output


# --- ablation ---------------------------------------------------------------------------------
def test_ablation_on_images(internvl_model, internvl_processor, diag_images, tmp_path):
    ckpts = {}
    for variant in ("cosine", "cross_attn", "self_attn"):
        gswa_plugin.enable(internvl_model, {"variant": variant, "hidden_size": 32, "num_heads": 4})
        ckpts[variant] = gswa_plugin.save(internvl_model, tmp_path / variant)
        gswa_plugin.disable(internvl_model)
    rows = it.ablate_on_images(internvl_model, internvl_processor, ckpts, diag_images[:2], progress=False)
    assert [r.name for r in rows] == ["none", "cosine", "cross_attn", "self_attn"]
    by = {r.name: r for r in rows}
    # identity-initialised attention variants leave the host's output exactly unchanged
    for name in ("cross_attn", "self_attn"):
        assert by[name].max_abs_logit_change == 0.0 and by[name].top1_agreement == 1.0
    assert by["cosine"].max_abs_logit_change > 0
    assert by["cosine"].stats["entropy_rel"] < 1.0
    assert not gswa_plugin.is_enabled(internvl_model)


def test_remove_tiles_on_images(internvl_model, internvl_processor, diag_images):
    gswa_plugin.enable(internvl_model, COSINE)
    res = it.remove_tiles_on_images(internvl_model, internvl_processor, diag_images[:1], it.RemovalSpec(k=2), progress=False)
    assert len(res[0].removed) == 2
    assert res[0].change.max_abs_logit_change > 0
    res0 = it.remove_tiles_on_images(internvl_model, internvl_processor, diag_images[:1], it.RemovalSpec(k=0), progress=False)
    assert res0[0].change.max_abs_logit_change == 0.0 and res0[0].change.kl_divergence == 0.0



def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    import runpy
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "docs" / "examples" / "inspection.py"))
    out = capsys.readouterr().out
    assert "coffee removed tiles" in out and "dropped [[" in out
    assert "entropy_rel" in out


def test_remove_tiles_and_ablate_cli_over_images(tmp_path, diag_images, internvl_model, fast_default):
    from gswa_plugin.cli import app

    folder = tmp_path / "imgs"
    folder.mkdir()
    diag_images[0][1].save(folder / "coffee.png")
    runner = CliRunner()
    cfg = tmp_path / "cos.yaml"
    cfg.write_text("gswa:\n  variant: cosine\n  cosine_temperature: 0.05\n")
    res = runner.invoke(app, ["remove-tiles", "--image", str(folder), "--gswa", str(cfg), "--k", "2", "--mode", "drop"])
    assert res.exit_code == 0, res.output
    assert "coffee.png" in res.output and "drop: 2 highest-weight tiles" in res.output
    ident = _checkpoint(internvl_model, tmp_path, "self_attn", 0.0)
    res = runner.invoke(app, ["ablate", "-c", f"cosine={cfg}", "-c", f"self_attn={ident}", "--image", str(folder)])
    assert res.exit_code == 0, res.output
    assert "self_attn" in res.output and "cosine" in res.output
    res = runner.invoke(app, ["ablate", "-c", "oops", "--image", str(folder)])
    assert res.exit_code == 2 and "NAME=PATH" in res.output
    res = runner.invoke(app, ["remove-tiles", "--k", "1"])
    assert res.exit_code == 2 and "either --image" in res.output
