"""transformers' native InternVL (``InternVLForConditionalGeneration`` / ``InternVLModel``).

The format of the InternVL2.5/3 "-hf" checkpoints and of InternVL2 converted to native classes
(``gswa convert-internvl2``).

Seam: the inner model's ``get_image_features``; its ``pooler_output`` is ``[tiles, 256, D]``
after the projector for the whole batch, with no grouping per image. Each image's tiles are
row-major with the thumbnail LAST (present only when the image has more than one tile). The
InternViT CLS token is dropped inside the method, so it is read from the vision outputs the
method returns (``last_hidden_state`` or the selected ``hidden_states`` layer). Tiles per image
are not passed to the model: they are counted from the runs of image-context tokens in
``input_ids`` (256 per tile), captured by a pre-hook on the inner forward and by a wrapper
around ``generate()``, which encodes images before ``input_ids`` reach the model.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from gswa_plugin.adapters._base import (
    Adapter,
    install_input_ids_capture,
    model_type,
    patch_method,
    resolve_path,
    summarise,
    wants_tuple,
)
from gswa_plugin.adapters._layout import views_per_run
from gswa_plugin.apply import placeholder_weights
from gswa_plugin.hookspecs import hookimpl


def _inner(model: nn.Module) -> nn.Module:
    """The module that owns ``get_image_features`` (``model.model`` for the generation class)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "vision_tower"):
        return inner
    return model


class InternVLAdapter(Adapter):
    name = "internvl"
    description = "transformers InternVLForConditionalGeneration / InternVLModel (InternVL2.5/3 -hf, converted InternVL2)"
    global_position = "last"
    has_cls = True

    def matches(self, model: nn.Module) -> bool:
        return model_type(model) == "internvl"

    def required_modules(self, model: nn.Module) -> dict[str, Any]:
        prefix = "model." if _inner(model) is not model else ""
        return {f"{prefix}{m}": None for m in ("vision_tower", "multi_modal_projector", "get_image_features")}

    def _layers(self, model: nn.Module) -> list[int]:
        layer = model.config.vision_feature_layer
        return list(layer) if isinstance(layer, (list, tuple)) else [layer]

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        return model.config.vision_config.hidden_size * len(self._layers(model))

    def reference_parameter(self, model: nn.Module) -> torch.Tensor:
        return next(resolve_path(model, self._prefix(model) + "multi_modal_projector").parameters())

    def _prefix(self, model: nn.Module) -> str:
        return "model." if _inner(model) is not model else ""

    def language_model(self, model: nn.Module) -> nn.Module | None:
        return _inner(model).language_model

    def position_weights(self, model: nn.Module, handle: Any, seq_len: int) -> torch.Tensor | None:
        ids = handle.state.get("call_input_ids")
        token = model.config.image_token_id
        if ids is None or ids.shape[-1] != seq_len:
            return None
        return placeholder_weights(
            handle, ids, token,
            "the input holds image tokens but GSWA saw no image features in this forward; pass pixel_values "
            "with the input_ids (precomputed image features bypass GSWA)",
        )

    def views_from_ids(self, model: nn.Module, input_ids: Any, tokens_per_view: int) -> list[int]:
        """Views per image read off ``input_ids`` (a tensor or its host copy): one run of
        image-context tokens per image."""
        return views_per_run(input_ids, model.config.image_token_id, tokens_per_view)

    def install(self, model: nn.Module, handle: Any) -> None:
        inner = _inner(model)
        cfg = model.config
        use_cls = self.use_cls(handle.config)
        adapter = self

        def make_wrapper(original: Callable) -> Callable:
            def get_image_features(pixel_values: torch.Tensor, **kwargs: Any) -> Any:
                want_tuple = wants_tuple(inner, kwargs)
                kwargs["return_dict"] = True
                out = original(pixel_values=pixel_values, **kwargs)
                vision_feature_layer = kwargs.get("vision_feature_layer")
                layer = vision_feature_layer if vision_feature_layer is not None else cfg.vision_feature_layer
                layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
                hidden = [
                    out.last_hidden_state if (l == -1 or out.hidden_states is None) else out.hidden_states[l]
                    for l in layers
                ]
                summaries = torch.cat([summarise(h, use_cls, adapter.has_cls) for h in hidden], dim=-1)
                feats = out.pooler_output
                ids = handle.state.pop("input_ids", None)
                tokens = feats.shape[1]
                layout = handle.layout_from_ids(
                    feats.shape[0], ids, lambda a: adapter.views_from_ids(model, a, tokens), feats.device,
                    image_token=cfg.image_token_id, tokens_per_view=tokens,
                )
                out.pooler_output = handle.process(feats, summaries, layout, pixel_values=pixel_values)
                return out.to_tuple() if want_tuple else out

            return get_image_features

        handle.add_undo(patch_method(inner, "get_image_features", make_wrapper))
        install_input_ids_capture(model, inner, handle)


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(InternVLAdapter())
