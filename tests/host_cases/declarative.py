"""The declarative adapter, retrofitting GOT-OCR2 (no built-in adapter) from YAML alone: tiny
GotOcr2ForConditionalGeneration + real GotOcr2Processor (multi-crop, thumbnail last)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import got_ocr2_inputs, tiny_got_ocr2

from . import HostCase

#: The YAML the docs show (docs/examples/declarative_got_ocr2.yaml).
YAML_PATH = Path(__file__).resolve().parents[2] / "docs" / "examples" / "declarative_got_ocr2.yaml"


def gswa_block() -> dict:
    """The ``gswa:`` block of the YAML file, minus the variant (the contract test picks it)."""
    block = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))["gswa"]
    block.pop("variant", None)
    return block


CASE = HostCase(
    adapter="declarative",
    make_model=tiny_got_ocr2,
    make_inputs=lambda: got_ocr2_inputs([sample_image("page"), sample_image("coffee").resize((300, 100))]),
    views_per_image=[3, 4],  # page: 2 crops + thumbnail; coffee: 3 crops + thumbnail
    language_model=lambda m: m.model.language_model,
    config=gswa_block(),
)
