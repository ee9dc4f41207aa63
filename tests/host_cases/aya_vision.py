"""Aya Vision: tiny AyaVisionForConditionalGeneration + real AyaVisionProcessor (GotOcr2 PIL tiling)."""

from __future__ import annotations

from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import tiny_aya_vision, tiny_aya_vision_processor

from . import HostCase


def _inputs() -> dict:
    proc = tiny_aya_vision_processor(max_patches=6)
    return dict(
        proc(
            text=["<image> describe the image", "what is in the picture <image> ?"],
            images=[sample_image("astronaut"), sample_image("coffee").resize((300, 100))],
            return_tensors="pt",
            padding=True,
        )
    )


CASE = HostCase(
    adapter="aya_vision",
    make_model=tiny_aya_vision,
    make_inputs=_inputs,
    views_per_image=[5, 4],  # 2x2 tiles + thumbnail, 1x3 tiles + thumbnail
    language_model=lambda m: m.model.language_model,
)
