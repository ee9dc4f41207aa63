"""Aya Vision (``AyaVisionForConditionalGeneration`` / ``AyaVisionModel``).

Seam: the inner model's ``get_image_features``; its ``pooler_output`` is ``[views, tokens, D]``
for the whole batch after the projector (pixel shuffle -> LayerNorm -> SwiGLU MLP; the weights
are applied after it, since the LayerNorm would cancel a per-view scalar before it). Each image
is tiled by the GotOcr2 image processor: tiles row-major, the global thumbnail LAST (only when
the image has more than one tile).

The vision tower is SigLIP, without CLS: a view's summary is the mean of its tokens in the
layer the host selects (``vision_feature_layer``).

Views per image are read off ``input_ids``: the processor writes ``TILE_i`` before each tile's
run of ``<|IMG_PATCH|>`` tokens and ``TILE_GLOBAL`` before the thumbnail's run, which closes
the image.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..hookspecs import hookimpl
from ._base import Adapter, model_type, patch_method
from ._layout import refuse_cls_summary, views_closed_by_marker
from .internvl import install_input_ids_capture


def _inner(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "multi_modal_projector") else model


class AyaVisionAdapter(Adapter):
    name = "aya_vision"
    description = "transformers AyaVisionForConditionalGeneration / AyaVisionModel"
    global_position = "last"
    has_cls = False

    def matches(self, model: nn.Module) -> bool:
        return model_type(model) == "aya_vision"

    def required_modules(self, model: nn.Module) -> dict[str, Any]:
        prefix = "model." if _inner(model) is not model else ""
        return {f"{prefix}{m}": None for m in ("vision_tower", "multi_modal_projector", "get_image_features")}

    def _layers(self, model: nn.Module) -> list[int]:
        layer = model.config.vision_feature_layer
        return list(layer) if isinstance(layer, (list, tuple)) else [layer]

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        refuse_cls_summary(self.name, config)
        return model.config.vision_config.hidden_size * len(self._layers(model))

    def reference_parameter(self, model: nn.Module) -> torch.Tensor:
        return next(_inner(model).multi_modal_projector.parameters())

    def install(self, model: nn.Module, handle: Any) -> None:
        inner = _inner(model)
        cfg = model.config

        def make_wrapper(original: Callable) -> Callable:
            def get_image_features(pixel_values: torch.Tensor, **kwargs: Any) -> Any:
                want_tuple = kwargs.get("return_dict") is False
                kwargs["return_dict"] = True
                out = original(pixel_values=pixel_values, **kwargs)
                layer = kwargs.get("vision_feature_layer")
                layer = cfg.vision_feature_layer if layer is None else layer
                layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
                hidden = [out.last_hidden_state if out.hidden_states is None else out.hidden_states[l] for l in layers]
                summaries = torch.cat([h.mean(dim=1) for h in hidden], dim=-1)
                feats = out.pooler_output
                ids = handle.state.pop("input_ids", None)
                counts = None if ids is None else views_closed_by_marker(ids, cfg.image_token_id, feats.shape[1])
                layout = handle.layout_for(feats.shape[0], counts)
                out.pooler_output = handle.process(feats, summaries, layout, pixel_values=pixel_values)
                return out.to_tuple() if want_tuple else out

            return get_image_features

        handle.add_undo(patch_method(inner, "get_image_features", make_wrapper))
        install_input_ids_capture(model, inner, handle)


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(AyaVisionAdapter())
