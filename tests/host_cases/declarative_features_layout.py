"""The declarative adapter on image features of more than three dimensions
(``declare.features_layout``): the tiny GOT-OCR2 whose seam returns each view's tokens as a grid
(``[views, h, w, dim]``, and ``[1, views, h, w, dim]``), a stand-in seam on a real host (see
:func:`gswa_plugin.testing.tiny_more.tiny_got_ocr2_grid`), with the real GotOcr2Processor."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import yaml

from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import got_ocr2_inputs, tiny_got_ocr2_grid

from . import HostCase

#: The YAML the docs show (docs/examples/declarative_features_layout.yaml).
YAML_PATH = Path(__file__).resolve().parents[2] / "docs" / "examples" / "declarative_features_layout.yaml"


def gswa_block(**declare) -> dict:
    """The ``gswa:`` block of the YAML file, minus the variant (the contract test picks it)."""
    block = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))["gswa"]
    block.pop("variant", None)
    block["declare"].update(declare)
    return block


def inputs() -> dict:
    return got_ocr2_inputs([sample_image("page"), sample_image("coffee").resize((300, 100))])


CASES = [
    HostCase(
        adapter="declarative",
        make_model=tiny_got_ocr2_grid,
        make_inputs=inputs,
        views_per_image=[3, 4],  # page: 2 crops + thumbnail; coffee: 3 crops + thumbnail
        language_model=lambda m: m.model.language_model,
        config=gswa_block(),
        global_position="last",
        id="declarative-features-4d",
    ),
    HostCase(
        adapter="declarative",
        make_model=partial(tiny_got_ocr2_grid, batch_axis=True),
        make_inputs=inputs,
        views_per_image=[3, 4],
        language_model=lambda m: m.model.language_model,
        config=gswa_block(features_layout=["views", "views", "tokens", "tokens", "dim"]),
        global_position="last",
        id="declarative-features-5d",
    ),
]
