"""``gswa bench`` on tiny shapes (a smoke test: no timing is asserted) and its measuring tools."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from gswa_plugin import is_enabled
from gswa_plugin.cli import app
from gswa_plugin.errors import ConfigError
from gswa_plugin.tools import bench


def test_bench_command_prints_and_writes_the_tables(tmp_path):
    out = {k: tmp_path / f"bench.{k}" for k in ("json", "md", "png")}
    result = CliRunner().invoke(
        app,
        ["bench", "--shapes", "tiny", "--tiles", "1,2", "--repeats", "2", "--warmup", "0", "--threads", "1",
         "--json", str(out["json"]), "--markdown", str(out["md"]), "--plot", str(out["png"])],
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Reduced depth, scaled: 1 of 2 vision layers" in text  # says that layers were scaled in
    assert "| 1 |" in text and "| 2 + 1 |" in text  # one row per tile count, thumbnail shown
    assert "GSWA / image encoding" in text and "GSWA / step" in text
    assert "Parameters: GSWA" in text and "target <" in text
    data = json.loads(out["json"].read_text())
    assert [r["tiles"] for r in data["rows"]] == [1, 2]
    assert [r["views"] for r in data["rows"]] == [1, 3]
    for row in data["rows"]:
        for values in row["ratios"].values():
            assert len(values) == 2 and all(v > 0 for v in values)
    assert data["rows"][-1]["peak_step_added_bytes"] is not None  # memory at the largest tile count
    assert data["host_parameters"] == bench.host_parameter_count(bench.SHAPES["tiny"])
    assert out["md"].read_text().count("| 2 + 1 |") == 2
    assert out["png"].stat().st_size > 1000
    again = CliRunner().invoke(app, ["bench", "--from-json", str(out["json"])])  # render without measuring
    assert again.exit_code == 0, again.output
    assert bench.markdown_tables(bench.load_json(out["json"])) in again.output


def test_bench_leaves_the_host_as_it_was():
    host = bench._Host(bench.SHAPES["tiny"], 1, 1, torch.float32, torch.device("cpu"))
    inputs = bench._make_inputs(bench.SHAPES["tiny"], 3, torch.device("cpu"), torch.float32, seed=0)
    fwd, train, ops = bench._gswa_times(host, bench.GSWAConfig(), inputs, inner_reps=1)
    assert fwd > 0 and train > 0 and ops > 0
    assert not is_enabled(host.model) and not hasattr(host.model, "gswa")
    assert "get_image_features" not in vars(host.model.model)  # the stand-in is gone


def test_host_parameter_count_is_exact():
    from transformers import InternVLForConditionalGeneration

    shapes = bench.SHAPES["tiny"]
    model = InternVLForConditionalGeneration(bench.host_config(shapes))
    assert bench.host_parameter_count(shapes) == sum(p.numel() for p in model.parameters())


def test_internvl2_2b_shapes():
    s = bench.SHAPES["internvl2-2b"]
    assert s.tokens_per_tile == 256 and 4 * s.vision_hidden == 4096 and s.text_hidden == 2048


def test_peak_memory_counts_new_tensors_not_views_or_existing_ones():
    existing = torch.ones(1000)
    with bench.PeakMemory() as mem:
        a = existing * 2  # 4000 bytes
        view = a[:10].t()  # a view: no new storage
        b = a + 1  # 4000 more: peak 8000
        del a, view, b
        c = torch.ones(500)  # 2000 bytes after the others are freed
    assert mem.peak == 8000
    assert mem.current == 2000
    assert mem.ops >= 4
    del c


@pytest.mark.parametrize(
    "kwargs",
    [{"tiles": [0]}, {"shapes": "huge"}, {"repeats": 0}, {"vision_layers": 3}, {"dtype": "int8"}],
)
def test_bench_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        bench.run(**{"shapes": "tiny", "progress": False, **kwargs})


def test_bench_command_reports_bad_tiles():
    result = CliRunner().invoke(app, ["bench", "--shapes", "tiny", "--tiles", "a,b"])
    assert result.exit_code == 2
    assert "--tiles takes comma-separated integers" in result.output


def test_layer_clocks_see_forward_and_backward():
    shapes = bench.SHAPES["tiny"]
    host = bench._Host(shapes, 1, 1, torch.float32, torch.device("cpu"))
    inputs = bench._make_inputs(shapes, 3, torch.device("cpu"), torch.float32, seed=0)
    encode, step = host.train_step(inputs)
    assert host.tclock.forward_s > 0 and host.tclock.backward_s > 0  # the language layer, both ways
    assert host.vclock.forward_s > 0 and host.vclock.backward_s == 0  # the vision encoder is frozen
    assert host.enc_clock.backward_s > 0  # the projector's backward
    assert 0 < encode < step
    assert all(p.grad is None for p in host.model.parameters())  # gradients cleared after the step


def test_bench_times_every_mode_and_prints_preset_shares(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        ["bench", "--shapes", "tiny", "--tiles", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
         "--no-memory", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert "1 vision and 2 language layers actually run (not scaled)" in text
    for mode in ("embed", "value", "attn_bias"):
        assert f"| {mode} | " in text
    for preset in ("InternVL2-1B", "InternVL2-2B", "InternVL2-8B", "LLaVA-NeXT-7B"):
        assert f"| {preset} | " in text
    assert "Tensor ops GSWA adds" in text and "decode step: ops added (host)" in text
    modes = json.loads((tmp_path / "bench_modes.json").read_text())
    assert set(modes["ratios"]) == {"embed", "value", "attn_bias"}
    for per_stage in modes["ratios"].values():
        assert set(per_stage) == {"encode", "prefill", "decode", "train"}
        assert all(len(v) == 1 and v[0] > 0 for v in per_stage.values())


def test_parameter_shares_match_a_built_host():
    """Preset shares are counted on the meta device from config shapes."""
    from gswa_plugin.tools import bench_modes

    rows = {r["host"]: r for r in bench_modes.parameter_shares()}
    assert set(rows) == set(bench_modes.PRESETS)
    # InternVL2-2B shapes are those of the seam benchmark's host: the two counts agree
    assert rows["InternVL2-2B"]["host_parameters"] == bench.host_parameter_count(bench.SHAPES["internvl2-2b"])
    # GSWA's width does not depend on the host's language model; its share shrinks with the host
    assert rows["InternVL2-1B"]["share"] > rows["InternVL2-2B"]["share"] > rows["InternVL2-8B"]["share"]


def test_parameter_shares_build_every_registered_variant_not_only_the_first_three():
    """`gswa bench --config` with a question-aware (or plugin) variant used to raise KeyError after
    minutes of timing: the share count looked the variant up in the three image-only built-ins."""
    from gswa_plugin.tools.bench_modes import parameter_shares

    base = {r["host"]: r["gswa_parameters"] for r in parameter_shares({"variant": "self_attn"})}
    text = {r["host"]: r["gswa_parameters"] for r in parameter_shares({"variant": "text_guided"})}
    assert base.keys() == text.keys()
    # the text path's projection from the language model's width adds parameters on every preset
    assert all(text[h] > base[h] for h in base)


def test_parameter_shares_name_an_unknown_variant():
    from gswa_plugin.errors import ConfigError
    from gswa_plugin.tools.bench_modes import parameter_shares

    with pytest.raises(ConfigError) as info:
        parameter_shares({"variant": "no_such_variant"})
    assert len(info.value.problems) == 1 and "no_such_variant" in info.value.problems[0]
    assert "text_guided" in info.value.problems[0]


@pytest.mark.parametrize("variant", ["text_guided", "text_cross_attn"])
def test_bench_measures_the_question_aware_variants_with_their_text(tmp_path, monkeypatch, variant):
    """`gswa bench --config` with a question-aware variant stopped in the modes table (its GSWA,
    given non-identity parameters, saw no text at the directly called seam), and the seam table
    timed GSWA without its text path (an identity module was called with ``text=None``; also in
    the memory pass's image encoding). Every
    GSWA forward of the run must now receive the pooled prompt, and each prompt length is said."""
    from gswa_plugin.weighting import TextGuidedScorer

    texts = []
    original = TextGuidedScorer.forward

    def spy(self, tokens, tile_mask, text=None):
        texts.append(None if text is None else tuple(text.shape))
        return original(self, tokens, tile_mask, text)

    monkeypatch.setattr(TextGuidedScorer, "forward", spy)
    config = tmp_path / "gswa.yaml"
    config.write_text(f"gswa:\n  variant: {variant}\n")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        ["bench", "--shapes", "tiny", "--tiles", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
         "--config", str(config), "--prompt-tokens", "20", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert texts and None not in texts  # the seam table, its memory pass, the modes table, the op counts
    assert set(texts) == {(1, bench.SHAPES["tiny"].text_hidden)}
    assert f"variant {variant}" in result.output and "prompt 20 text tokens before the image" in result.output
    data = json.loads(out.read_text())
    assert data["shapes"]["prompt_tokens"] == 20 and data["gswa_config"]["variant"] == variant
    assert all(v > 0 for row in data["rows"] for values in row["ratios"].values() for v in values)
    modes = json.loads((tmp_path / "bench_modes.json").read_text())
    assert all(v[0] > 0 for per_stage in modes["ratios"].values() for v in per_stage.values())
