"""transformers' LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration`` / ``LlavaOnevisionModel``).

Seam: the INNER model's ``pack_image_features`` (the outer class's version passes
``vision_feature_select_strategy``, which the inner one rejects). It receives one
``[views_i, tokens, D]`` tensor per image after the projector: base image FIRST, then row-major
anyres tiles. Weights act there, before unpadding, the ``anyres_max_N`` shrinking of large grids
(bilinear interpolation, which mixes neighbouring tiles) and newline insertion. Images of a
multi-image sample carry only their base view: a single view, left unchanged. The SigLIP
encoder has no CLS token, so the summary is the mean of the view's tokens at the selected
layer (``summary: auto`` or ``mean``; ``cls`` is refused).
"""

from __future__ import annotations

from typing import Callable

from gswa_plugin.adapters._anyres import AnyresPackAdapter
from gswa_plugin.adapters._base import Adapter
from gswa_plugin.hookspecs import hookimpl


class LlavaOnevisionAdapter(AnyresPackAdapter):
    name = "llava_onevision"
    description = "transformers LlavaOnevisionForConditionalGeneration / LlavaOnevisionModel (SigLIP, anyres_max)"
    model_types = ("llava_onevision",)
    has_cls = False


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(LlavaOnevisionAdapter())
