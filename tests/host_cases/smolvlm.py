"""SmolVLM: tiny SmolVLMForConditionalGeneration + real SmolVLMProcessor (PIL image processor)."""

from __future__ import annotations

from gswa_plugin.testing.tiny_more import tiny_idefics3

from . import HostCase
from .idefics3 import idefics3_inputs

CASE = HostCase(
    adapter="smolvlm",
    make_model=lambda: tiny_idefics3("smolvlm"),
    make_inputs=lambda: idefics3_inputs("smolvlm"),
    views_per_image=[10, 4],  # 3x3 tiles + global, 1x3 tiles + global
    language_model=lambda m: m.model.text_model,
)
