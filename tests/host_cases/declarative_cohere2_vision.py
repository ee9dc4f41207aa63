"""The declarative adapter, retrofitting Cohere2 Vision (no built-in adapter) from YAML alone:
tiny Cohere2VisionForConditionalGeneration + the real Cohere2VisionProcessor. Its own image
processor needs torchvision (not installed here): the GotOcr2 image processor (PIL) stands in
for the tiling (row-major crops, thumbnail last), see ``cohere2_vision_inputs``."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import cohere2_vision_inputs, tiny_cohere2_vision

from . import HostCase

#: The YAML the docs show (docs/examples/declarative_cohere2_vision.yaml).
YAML_PATH = Path(__file__).resolve().parents[2] / "docs" / "examples" / "declarative_cohere2_vision.yaml"


@functools.lru_cache(maxsize=1)
def features_rank() -> int:
    """The rank of ``get_image_features(...).pooler_output`` in the installed transformers: 3
    (``[views, tokens, dim]``) in 5.24, 4 (``[views, h, w, dim]``, before the flatten) in older
    releases such as 5.8 (the lmms-engine CI step's), where the YAML needs ``features_layout``."""
    import torch

    model = tiny_cohere2_vision()
    with torch.no_grad():
        out = model.model.get_image_features(inputs()["pixel_values"][:1], return_dict=True)
    return out.pooler_output.dim()


def gswa_block() -> dict:
    block = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))["gswa"]
    block.pop("variant", None)
    if features_rank() == 4:  # the docs' YAML note: older transformers give [views, h, w, dim]
        block["declare"]["features_layout"] = ["views", "tokens", "tokens", "dim"]
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
