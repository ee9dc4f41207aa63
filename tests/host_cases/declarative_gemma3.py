"""The declarative adapter, retrofitting Gemma 3 pan-and-scan (no built-in adapter) from YAML
alone: tiny Gemma3ForConditionalGeneration + real Gemma3Processor (PIL image processor, crops
after the original view, one ``<start_of_image>`` per view)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import gemma3_inputs, tiny_gemma3

from . import HostCase

#: The YAML the docs show (docs/examples/declarative_gemma3.yaml).
YAML_PATH = Path(__file__).resolve().parents[2] / "docs" / "examples" / "declarative_gemma3.yaml"


def gswa_block() -> dict:
    """The ``gswa:`` block of the YAML file, minus the variant (the contract test picks it)."""
    block = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))["gswa"]
    block.pop("variant", None)
    return block


def images() -> list:
    """Two photographs that pan-and-scan cuts into 2 and 3 crops (3 and 4 views)."""
    return [sample_image("astronaut").resize((200, 100)), sample_image("coffee").resize((300, 100))]


def inputs() -> dict:
    return gemma3_inputs(images(), ["<start_of_image> describe the image", "what is in the picture <start_of_image> ?"])


CASE = HostCase(
    adapter="declarative",
    make_model=tiny_gemma3,
    make_inputs=inputs,
    views_per_image=[3, 4],  # original + 2 crops; original + 3 crops
    language_model=lambda m: m.model.language_model,
    config=gswa_block(),
    global_position="first",
    id="declarative-gemma3",
)
