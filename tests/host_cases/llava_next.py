"""LLaVA-NeXT: tiny LlavaNextForConditionalGeneration (CLIP, CLS) + real LlavaNextProcessor."""

from __future__ import annotations

from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_hosts import tiny_llava_next, tiny_llava_next_processor

from . import HostCase

PROMPTS = ["<image> describe the image", "what is in the picture <image> ?"]


def anyres_inputs(make_processor) -> dict:
    """Two prompts with one real photograph each (2x2 and 1x3 grids), left-padded."""
    proc = make_processor()
    proc.tokenizer.padding_side = "left"  # decoder-only generation
    return dict(
        proc(
            text=PROMPTS,
            images=[sample_image("astronaut"), sample_image("coffee").resize((300, 100))],
            return_tensors="pt",
            padding=True,
        )
    )


CASE = HostCase(
    adapter="llava_next",
    make_model=tiny_llava_next,
    make_inputs=lambda: anyres_inputs(tiny_llava_next_processor),
    views_per_image=[5, 4],  # base + 2x2 tiles; base + 1x3 tiles (base first)
    language_model=lambda m: m.model.language_model,
)
