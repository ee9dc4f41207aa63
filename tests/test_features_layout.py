"""``declare.features_layout``: image features of more than three dimensions, reshaped to
``[views, tokens, dim]`` for weighting and handed back to the host in their own shape. The host is
the tiny GOT-OCR2 with a grid seam (a stand-in seam on a real host, see
``gswa_plugin.testing.tiny_more.tiny_got_ocr2_grid``); the full contract runs on it in
``tests/test_contract.py`` (cases ``declarative-features-4d`` / ``-5d``)."""

from __future__ import annotations

import copy

import pytest
import torch

import gswa_plugin
from gswa_plugin.config import GSWAConfig
from gswa_plugin.errors import ConfigError, LayoutError
from gswa_plugin.testing.contract import PEAKED
from gswa_plugin.testing.tiny_more import tiny_got_ocr2_grid

from .host_cases import declarative_features_layout as case


@pytest.fixture(scope="module")
def inputs() -> dict:
    return case.inputs()


@pytest.mark.parametrize(
    "layout",
    [["tokens", "views", "dim"], ["views", "tokens", "dim", "tokens"], ["views", "dim"], ["views", "tokens", "dim", "dim"]],
)
def test_a_layout_that_is_not_a_reshape_is_refused_when_the_config_loads(layout):
    with pytest.raises(ConfigError, match=r"declare\.features_layout` must be one or more `views`"):
        GSWAConfig.from_dict(case.gswa_block(features_layout=layout))


def test_an_unknown_axis_role_names_the_key():
    with pytest.raises(ConfigError, match=r"features_layout"):
        GSWAConfig.from_dict(case.gswa_block(features_layout=["views", "height", "dim"]))


def test_weights_act_on_each_views_tokens_and_the_host_gets_its_shape_back(inputs):
    model = tiny_got_ocr2_grid()
    pixels = inputs["pixel_values"]
    with torch.no_grad():
        before = model.model.get_image_features(pixels).pooler_output
    assert before.shape[1:3] == (2, 2)  # [views, h, w, dim]
    gswa_plugin.enable(model, {**case.gswa_block(), **PEAKED})
    with torch.no_grad():
        model(**copy.deepcopy(inputs))
        with gswa_plugin.tiles(model, [3, 4]):
            after = model.model.get_image_features(pixels).pooler_output
    assert after.shape == before.shape
    w = torch.cat([torch.cat([t, torch.ones(1)]) for t in gswa_plugin.last_weights(model)])  # thumbnail last: 1
    assert not torch.allclose(w, torch.ones_like(w))
    assert torch.equal(after, before * w[:, None, None, None].to(before.dtype))


def test_four_d_features_without_a_layout_name_the_key(inputs):
    model = tiny_got_ocr2_grid()
    block = case.gswa_block()
    del block["declare"]["features_layout"]
    gswa_plugin.enable(model, block)
    with pytest.raises(LayoutError, match=r"shape \(7, 2, 2, 64\).*declare\.features_layout"):
        model(**copy.deepcopy(inputs))


def test_a_layout_of_the_wrong_rank_names_the_key_and_the_shape(inputs):
    model = tiny_got_ocr2_grid()
    gswa_plugin.enable(model, case.gswa_block(features_layout=["views", "tokens", "dim"]))
    with pytest.raises(LayoutError, match=r"declare\.features_layout \['views', 'tokens', 'dim'\] names 3 axes .*\(7, 2, 2, 64\)"):
        model(**copy.deepcopy(inputs))


def test_a_layout_whose_views_do_not_match_the_images_names_the_key(inputs):
    wrong = ["views", "views", "tokens", "dim"]  # [views, h] read as views: 14 views of 2 tokens
    model = tiny_got_ocr2_grid()
    gswa_plugin.enable(model, case.gswa_block(features_layout=wrong))
    with pytest.raises(
        LayoutError, match=r"declare\.features_layout .* as 14 views of 2 tokens, but the images hold 7 views \(counted by pixel_values of shape \(7, 3,"
    ):
        model(**copy.deepcopy(inputs))
    gswa_plugin.disable(model)
    block = case.gswa_block(features_layout=wrong)
    block["declare"]["tiles_from"]["tokens_per_view"] = 4  # counted from input_ids instead
    gswa_plugin.enable(model, block)
    with pytest.raises(LayoutError, match=r"as 14 views of 2 tokens, but the images hold 7 views \(counted by declare\.tiles_from\)"):
        model(**copy.deepcopy(inputs))
    gswa_plugin.disable(model)
    gswa_plugin.enable(model, case.gswa_block(features_layout=wrong))
    with torch.no_grad(), gswa_plugin.tiles(model, [3, 4]), pytest.raises(LayoutError, match=r"hold 7 views \(counted by set_tiles\(\)\)"):
        model.model.get_image_features(inputs["pixel_values"])
