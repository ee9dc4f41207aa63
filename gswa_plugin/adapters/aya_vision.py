"""Aya Vision (``AyaVisionForConditionalGeneration`` / ``AyaVisionModel``).

The seam is laid out as in transformers' InternVL, so the adapter is the ``internvl`` one with
three differences. Seam: the inner model's ``get_image_features``; its ``pooler_output`` is
``[views, tokens, D]`` for the whole batch after the projector (pixel shuffle -> LayerNorm ->
SwiGLU MLP; the weights are applied after it, since the LayerNorm would cancel a per-view scalar
before it). Each image is tiled by the GotOcr2 image processor: tiles row-major, the global
thumbnail LAST (only when the image has more than one tile).

Differences from InternVL: the vision tower is SigLIP, without CLS, so a view's summary is the
mean of its tokens in the selected layer (``vision_feature_layer``) and ``summary: cls`` is
refused; and the processor writes each view as its own run of ``<|IMG_PATCH|>`` tokens, with
``TILE_i`` before each tile's run and ``TILE_GLOBAL`` before the thumbnail's, which closes the
image, so that is how views per image are read off ``input_ids``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from gswa_plugin.adapters._base import Adapter, model_type
from gswa_plugin.adapters._layout import refuse_cls_summary, views_closed_by_marker
from gswa_plugin.adapters.internvl import InternVLAdapter
from gswa_plugin.hookspecs import hookimpl


class AyaVisionAdapter(InternVLAdapter):
    name = "aya_vision"
    description = "transformers AyaVisionForConditionalGeneration / AyaVisionModel"
    global_position = "last"
    has_cls = False

    def matches(self, model: nn.Module) -> bool:
        return model_type(model) == "aya_vision"

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        refuse_cls_summary(self.name, config)
        return super().summary_dim(model, config)

    def views_from_ids(self, model: nn.Module, input_ids: torch.Tensor, tokens_per_view: int) -> list[int]:
        return views_closed_by_marker(input_ids, model.config.image_token_id, tokens_per_view)


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(AyaVisionAdapter())
