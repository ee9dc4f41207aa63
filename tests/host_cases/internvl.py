"""Native transformers InternVL: tiny InternVLForConditionalGeneration + real InternVLProcessor."""

from __future__ import annotations

from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor

from . import HostCase

_TILE = 56


def _inputs():
    proc = tiny_internvl_processor(image_size=_TILE, max_patches=6)
    return dict(
        proc(
            text=["<IMG_CONTEXT> describe the image", "what is in the picture <IMG_CONTEXT> ?"],
            images=[sample_image("astronaut"), sample_image("coffee").resize((300, 100))],
            return_tensors="pt",
            padding=True,
        )
    )


CASE = HostCase(
    adapter="internvl",
    make_model=lambda: tiny_internvl(image_size=_TILE),
    make_inputs=_inputs,
    views_per_image=[5, 4],
    language_model=lambda m: m.model.language_model,
)
