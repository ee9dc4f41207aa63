"""LLaVA-OneVision: tiny LlavaOnevisionForConditionalGeneration (SigLIP, no CLS) + real processor.

Grids of at most 4 tiles under ``anyres_max_9``: no shrinking, so every tile token reaches the
language model as is (shrinking is tested in tests/test_adapters_llava.py).
"""

from __future__ import annotations

from gswa_plugin.testing.tiny_hosts import tiny_llava_onevision, tiny_llava_onevision_processor

from . import HostCase
from .llava_next import anyres_inputs

CASE = HostCase(
    adapter="llava_onevision",
    make_model=tiny_llava_onevision,
    make_inputs=lambda: anyres_inputs(tiny_llava_onevision_processor),
    views_per_image=[5, 4],
    language_model=lambda m: m.model.language_model,
)
