"""transformers' LLaVA-NeXT (``LlavaNextForConditionalGeneration`` / ``LlavaNextModel``, LLaVA-1.6).

Seam: the inner model's ``pack_image_features``, which receives one ``[views_i, tokens, D]``
tensor per image after the projector: the base image (the whole image resized to one tile)
FIRST, then the anyres tiles in row-major order. Weights act there, before unpadding and the
insertion of newline tokens. Summaries: the CLIP CLS token of the selected vision layer
(``vision_feature_layer``, -2 in the released checkpoints), which the host itself drops for
strategy ``default``; ``summary: mean`` uses the mean of that layer's patch tokens instead.
"""

from __future__ import annotations

from typing import Callable

from gswa_plugin.adapters._anyres import AnyresPackAdapter
from gswa_plugin.adapters._base import Adapter
from gswa_plugin.hookspecs import hookimpl


class LlavaNextAdapter(AnyresPackAdapter):
    name = "llava_next"
    description = "transformers LlavaNextForConditionalGeneration / LlavaNextModel (LLaVA-1.6 anyres)"
    model_types = ("llava_next",)
    has_cls = True


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(LlavaNextAdapter())
