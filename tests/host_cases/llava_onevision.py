"""LLaVA-OneVision: tiny LlavaOnevisionForConditionalGeneration (SigLIP, no CLS) + real processor.

Grids of at most 4 tiles under ``anyres_max_9``: no shrinking, so every tile token reaches the
language model as is (shrinking is tested in tests/test_adapters_llava.py).
"""

from __future__ import annotations

from gswa_plugin.tiny import sample_image
from gswa_plugin.tiny_hosts import tiny_llava_onevision, tiny_llava_onevision_processor

from . import HostCase
from .llava_next import PROMPTS


def llava_onevision_inputs() -> dict:
    proc = tiny_llava_onevision_processor()
    proc.tokenizer.padding_side = "left"
    return dict(
        proc(
            text=PROMPTS,
            images=[sample_image("astronaut"), sample_image("coffee").resize((300, 100))],
            return_tensors="pt",
            padding=True,
        )
    )


CASE = HostCase(
    adapter="llava_onevision",
    make_model=tiny_llava_onevision,
    make_inputs=llava_onevision_inputs,
    views_per_image=[5, 4],
    language_model=lambda m: m.model.language_model,
)
