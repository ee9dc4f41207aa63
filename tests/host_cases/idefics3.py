"""Idefics3: tiny Idefics3ForConditionalGeneration + real Idefics3Processor (PIL image processor)."""

from __future__ import annotations

from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import tiny_idefics3, tiny_idefics3_processor

from . import HostCase


def idefics3_inputs(family: str) -> dict:
    proc = tiny_idefics3_processor(family)
    return dict(
        proc(
            text=["<image> describe the image", "what is in the picture <image> ?"],
            images=[[sample_image("astronaut")], [sample_image("coffee").resize((300, 100))]],
            return_tensors="pt",
            padding=True,
        )
    )


CASE = HostCase(
    adapter="idefics3",
    make_model=lambda: tiny_idefics3("idefics3"),
    make_inputs=lambda: idefics3_inputs("idefics3"),
    views_per_image=[10, 4],  # 3x3 tiles + global, 1x3 tiles + global
    language_model=lambda m: m.model.text_model,
)
