"""Retrofitting from YAML without silent no-ops (issue 14): Gemma 3 pan-and-scan read off
``input_ids`` alone, and every wrong declaration failing loudly, naming the key to fix (Gemma 3,
Cohere2 Vision; GOT-OCR2 for the summary width)."""

from __future__ import annotations

import copy

import pytest
import torch

import gswa_plugin
from gswa_plugin.adapters._layout import views_joined_by_text
from gswa_plugin.errors import ConfigError, LayoutError, MissingModuleError, SeamNotRunError
from gswa_plugin.testing.contract import PEAKED
from gswa_plugin.testing.tiny_more import tiny_cohere2_vision, tiny_gemma3, tiny_got_ocr2

from .host_cases import declarative as got_case
from .host_cases import declarative_cohere2_vision as cohere_case
from .host_cases import declarative_gemma3 as gemma_case


@pytest.fixture(scope="module")
def gemma_inputs() -> dict:
    return gemma_case.inputs()


def _gemma_block(**declare) -> dict:
    block = gemma_case.gswa_block()
    block["declare"] = {**block["declare"], **declare}
    return {**block, **PEAKED}


def test_joined_views_groups_views_by_the_text_between_them():
    # rows: [img A: 2 views joined by 9][text 7][img B: 1 view] / [img C: 3 views]
    ids = torch.tensor([[5, 5, 9, 5, 5, 7, 5, 5, 0], [5, 5, 9, 5, 5, 9, 9, 5, 5]])
    assert views_joined_by_text(ids, 5, 2, [9]) == [2, 1, 3]
    assert views_joined_by_text(ids, 5, 2, [9, 7]) == [3, 3]  # a new row always starts an image


def test_gemma3_layout_is_read_off_input_ids_without_set_tiles(gemma_inputs):
    model = tiny_gemma3()
    gswa_plugin.enable(model, _gemma_block())
    model(**copy.deepcopy(gemma_inputs))
    assert [w.shape[0] for w in gswa_plugin.last_weights(model)] == [2, 3]  # tiles per image, original excluded
    assert gswa_plugin.get_handle(model).last_batch.layout.views_per_image == (3, 4)


@pytest.mark.parametrize(
    "tiles_from",
    [
        {"group": "start_token", "token": "image_token_id", "start_token": "boi_token_id"},  # one start per VIEW
        {"group": "run", "token": "image_token_id"},  # one run per view
    ],
    ids=["start_token", "run"],
)
def test_a_grouping_that_makes_every_view_its_own_image_fails_loudly(gemma_inputs, tiles_from):
    model = tiny_gemma3()
    gswa_plugin.enable(model, _gemma_block(tiles_from=tiles_from))
    with pytest.raises(SeamNotRunError, match=r"declare\.tiles_from.*joined_views"):
        model(**copy.deepcopy(gemma_inputs))
    relaxed = _gemma_block(tiles_from={**tiles_from, "expect_tiles": False})
    gswa_plugin.disable(model)
    gswa_plugin.enable(model, relaxed)
    model(**copy.deepcopy(gemma_inputs))  # declared untiled: accepted
    assert all(w.tolist() == [1.0] for w in gswa_plugin.last_weights(model))


def test_a_wrong_global_position_is_reported_by_the_contract():
    case = copy.copy(gemma_case.CASE)
    case.config = _gemma_block(global_view="last")
    report = case.check(["layout"])
    assert not report.passed and "'first'" in report["layout"].reason


def test_a_seam_that_never_runs_fails_at_the_first_forward(gemma_inputs):
    model = tiny_gemma3()
    gswa_plugin.enable(model, _gemma_block(seam="model.vision_tower.get_input_embeddings"))
    with pytest.raises(SeamNotRunError, match=r"declare\.seam `model\.vision_tower\.get_input_embeddings` never ran"):
        model(**copy.deepcopy(gemma_inputs))
    gswa_plugin.disable(model)
    gswa_plugin.enable(model, _gemma_block(seam="model.vision_tower.get_input_embeddings"))
    with pytest.raises(SeamNotRunError, match="never ran"):
        model.generate(**copy.deepcopy(gemma_inputs), max_new_tokens=2, do_sample=False)


def test_a_projector_outside_the_seam_call_fails_at_the_first_forward(gemma_inputs):
    model = tiny_gemma3()
    block = _gemma_block(
        seam="model.vision_tower.forward", apply="before_projector", projector="model.multi_modal_projector"
    )
    gswa_plugin.enable(model, block)
    with pytest.raises(SeamNotRunError, match=r"declare\.projector `model\.multi_modal_projector` did not run inside"):
        model(**copy.deepcopy(gemma_inputs))


def test_a_module_named_as_the_seam_is_refused_at_enable():
    model = tiny_gemma3()
    with pytest.raises(MissingModuleError, match=r"names a module .*`model\.vision_tower\.forward`"):
        gswa_plugin.enable(model, _gemma_block(seam="model.vision_tower"))
    assert not gswa_plugin.is_enabled(model)


def test_the_missing_grouping_names_declare_tiles_from(gemma_inputs):
    model = tiny_gemma3()
    block = _gemma_block()
    del block["declare"]["tiles_from"]
    gswa_plugin.enable(model, block)
    with pytest.raises(LayoutError, match=r"declare\.tiles_from"):
        model(**copy.deepcopy(gemma_inputs))


def test_a_summary_width_that_differs_from_the_config_is_refused_at_enable():
    model = tiny_got_ocr2()  # strided SAM-style encoder: 32 wide inside, 16 channels out
    block = got_case.gswa_block()
    block["declare"]["summary"] = {**block["declare"]["summary"], "dim": "vision_config.hidden_size"}
    with pytest.raises(ConfigError, match=r"declare\.summary\.dim resolves to 32 .* gives width 16"):
        gswa_plugin.enable(model, block)
    assert not gswa_plugin.is_enabled(model)


# --- Cohere2 Vision (start token per image, thumbnail last) -------------------------------------
def _cohere_block(**declare) -> dict:
    block = cohere_case.gswa_block()
    block["declare"] = {**block["declare"], **declare}
    return {**block, **PEAKED}


@pytest.fixture(scope="module")
def cohere_inputs() -> dict:
    return cohere_case.inputs()


def test_cohere2_vision_wrong_grouping_token_fails_loudly(cohere_inputs):
    model = tiny_cohere2_vision()
    # one run per view (the line breaks split them): every view read as its own image
    gswa_plugin.enable(model, _cohere_block(tiles_from={"group": "run", "token": "image_token_id"}))
    with pytest.raises(SeamNotRunError, match=r"declare\.tiles_from \(group `run`\) splits the 9 views"):
        model(**copy.deepcopy(cohere_inputs))
    gswa_plugin.disable(model)
    # the start token of the wrong image marker (<|END_OF_IMG|>): the counts do not match the views
    bad = {"group": "start_token", "token": "image_token_id", "start_token": 5}
    gswa_plugin.enable(model, _cohere_block(tiles_from=bad))
    with pytest.raises(LayoutError, match=r"declare\.tiles_from\.start_token \(5\) does not open the images"):
        model(**copy.deepcopy(cohere_inputs))


def test_cohere2_vision_wrong_global_position_and_dead_seam_fail_loudly(cohere_inputs):
    case = copy.copy(cohere_case.CASE)
    case.config = _cohere_block(global_view="first")
    report = case.check(["layout"])
    assert not report.passed and "'last'" in report["layout"].reason
    model = tiny_cohere2_vision()
    gswa_plugin.enable(model, _cohere_block(seam="model.vision_tower.get_input_embeddings"))
    with pytest.raises(SeamNotRunError, match=r"declare\.seam .* never ran"):
        model(**copy.deepcopy(cohere_inputs))


# --- a dry run of the contract on your own model ------------------------------------------------
def test_check_model_dry_run_on_a_users_own_model_and_processor():
    from gswa_plugin.testing import check_model
    from gswa_plugin.testing.tiny_more import GEMMA3_TILE, tiny_gemma3_processor

    model, processor = tiny_gemma3(), tiny_gemma3_processor()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": GEMMA3_TILE // 2}
    report = check_model(
        model, processor, gemma_case.images(), config=gemma_case.gswa_block(), processor_kwargs=kwargs,
        global_position="first",
    )
    print(report)
    report.assert_passed()
    assert "views per image [3, 4]" in report["layout"].reason  # counted by the image processor alone
    assert not gswa_plugin.is_enabled(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is untouched
    wrong = gemma_case.gswa_block()
    wrong["declare"]["global_view"] = "last"
    bad = check_model(
        model, processor, gemma_case.images(), config=wrong, processor_kwargs=kwargs, global_position="first",
        checks=["layout"],
    )
    assert not bad.passed and "'first'" in bad["layout"].reason


def test_gswa_check_model_runs_the_contract_and_exits_non_zero_on_a_failure(tmp_path):
    from typer.testing import CliRunner

    from gswa_plugin.cli import app

    good = tmp_path / "good.yaml"
    good.write_text("gswa:\n  adapter: aya_vision\n  hidden_size: 32\n  num_heads: 4\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["check", str(good), "--model", "tiny-aya-vision"])
    assert result.exit_code == 0, result.output
    assert "6 of 6 checks passed" in result.output and "PASS  layout" in result.output
    bad = tmp_path / "bad.yaml"  # not identity at initialisation: the dry run says so
    bad.write_text("gswa:\n  adapter: aya_vision\n  hidden_size: 32\n  num_heads: 4\n  identity_init: false\n")
    result = CliRunner().invoke(app, ["check", str(bad), "--model", "tiny-aya-vision", "--image", "astronaut"])
    assert result.exit_code == 1 and "--image must be given twice" in result.output
    result = CliRunner().invoke(
        app, ["check", str(bad), "--model", "tiny-aya-vision", "--image", "astronaut", "--image", "page"]
    )
    assert result.exit_code == 1 and "FAIL  identity" in result.output, result.output
