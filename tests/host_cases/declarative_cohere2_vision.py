"""The declarative adapter, retrofitting Cohere2 Vision (no built-in adapter) from YAML alone:
tiny Cohere2VisionForConditionalGeneration + the real Cohere2VisionProcessor. Its own image
processor needs torchvision (not installed here): the GotOcr2 image processor (PIL) stands in
for the tiling (row-major crops, thumbnail last), see ``cohere2_vision_inputs``."""

from __future__ import annotations

from pathlib import Path

import yaml

from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import cohere2_vision_inputs, tiny_cohere2_vision

from . import HostCase

#: The YAML the docs show (docs/examples/declarative_cohere2_vision.yaml).
YAML_PATH = Path(__file__).resolve().parents[2] / "docs" / "examples" / "declarative_cohere2_vision.yaml"


def gswa_block() -> dict:
    block = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))["gswa"]
    block.pop("variant", None)
    return block


def inputs() -> dict:
    images = [sample_image("astronaut"), sample_image("coffee").resize((300, 100))]
    return cohere2_vision_inputs(images, ["<|IMG_PATCH|> describe the image", "what is in the picture <|IMG_PATCH|> ?"])


CASE = HostCase(
    adapter="declarative",
    make_model=tiny_cohere2_vision,
    make_inputs=inputs,
    views_per_image=[5, 4],  # 2x2 crops + thumbnail; 1x3 crops + thumbnail
    language_model=lambda m: m.model.language_model,
    config=gswa_block(),
    global_position="last",
    id="declarative-cohere2-vision",
)
