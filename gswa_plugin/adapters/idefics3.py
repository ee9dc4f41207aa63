"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``).

Seam: the inner model's ``get_image_features(pixel_values, pixel_attention_mask)``. Its
``pixel_values`` are ``[batch, max_views, 3, H, W]``: every view of every image of a sample,
padded with all-zero views that the method drops. Its ``pooler_output`` is a list with one
``[views_b * tokens, D]`` tensor per sample, after the connector (pixel shuffle + linear), so
the weights are applied there. Within an image, tiles come row-major and the global (resized
whole) image LAST; an image small enough not to be split is its global view alone.

The vision encoder is SigLIP-like, without CLS: each view is summarised by the mean of its
encoder tokens, counting only patches inside the real image (``patch_attention_mask``).

Views per image are not passed to the model. The prompt writes ``<row_i_col_j>`` before each
tile's run of ``<image>`` tokens and ``<global-img>`` before the global view's run, which
closes the image, so the counts are read off ``input_ids``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from gswa_plugin.adapters._base import Adapter, install_input_ids_capture, model_type, patch_method, wants_tuple
from gswa_plugin.adapters._layout import masked_mean, refuse_cls_summary, views_closed_by_marker
from gswa_plugin.adapters.internvl import InternVLAdapter
from gswa_plugin.hookspecs import hookimpl


class Idefics3Adapter(Adapter):
    """Adapter for one of the two Idefics3-layout families (same seam, same prompt format)."""

    global_position = "last"
    has_cls = False

    def __init__(self, name: str, model_types: tuple[str, ...], description: str):
        self.name = name
        self.model_types = model_types
        self.description = description

    def matches(self, model: nn.Module) -> bool:
        return model_type(model) in self.model_types

    def _inner(self, model: nn.Module) -> nn.Module:
        inner = getattr(model, "model", None)
        return inner if inner is not None and hasattr(inner, "connector") else model

    def _prefix(self, model: nn.Module) -> str:
        return "model." if self._inner(model) is not model else ""

    def required_modules(self, model: nn.Module) -> dict[str, Any]:
        p = self._prefix(model)
        return {f"{p}{m}": None for m in ("vision_model", "connector", "get_image_features")}

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        refuse_cls_summary(self.name, config)
        return model.config.vision_config.hidden_size

    def reference_parameter(self, model: nn.Module) -> torch.Tensor:
        return next(self._inner(model).connector.parameters())

    def language_model(self, model: nn.Module) -> nn.Module | None:
        return self._inner(model).text_model

    # One placeholder (`image_token_id`) per visual token, filled view by view in order, and the
    # call's input_ids kept by install_input_ids_capture: the same reading as InternVL's.
    position_weights = InternVLAdapter.position_weights

    def install(self, model: nn.Module, handle: Any) -> None:
        inner = self._inner(model)
        image_token_id = model.config.image_token_id

        def seen() -> dict[str, Any]:  # per thread: concurrent calls never mix
            return handle.state.setdefault("idefics3_seen", {})

        def vision_pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            seen()["patch_mask"] = kwargs.get("patch_attention_mask")

        def connector_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen()["features"] = output

        h1 = inner.vision_model.register_forward_pre_hook(vision_pre_hook, with_kwargs=True)
        h2 = inner.connector.register_forward_hook(connector_hook)
        handle.add_undo(h1.remove)
        handle.add_undo(h2.remove)

        def make_wrapper(original: Callable) -> Callable:
            def get_image_features(
                pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None, **kwargs: Any
            ) -> Any:
                want_tuple = wants_tuple(inner, kwargs)
                kwargs["return_dict"] = True
                seen().clear()
                try:
                    out = original(pixel_values=pixel_values, pixel_attention_mask=pixel_attention_mask, **kwargs)
                    feats = seen()["features"]  # [views, tokens, D]: the connector's output, real views only
                    mask = seen().get("patch_mask")
                finally:
                    seen().clear()
                hidden = out.last_hidden_state
                summaries = masked_mean(hidden, None if mask is None else mask.flatten(1))
                ids = handle.state.pop("input_ids", None)
                tokens = feats.shape[1]
                layout = handle.layout_from_ids(
                    feats.shape[0], ids, lambda a: views_closed_by_marker(a, image_token_id, tokens), feats.device
                )
                weighted = handle.process(feats, summaries, layout, pixel_values=pixel_values)
                per_sample = [f.shape[0] // feats.shape[1] for f in out.pooler_output]
                out.pooler_output = [w.reshape(-1, w.shape[-1]) for w in weighted.split(per_sample)]
                return out.to_tuple() if want_tuple else out

            return get_image_features

        handle.add_undo(patch_method(inner, "get_image_features", make_wrapper))
        install_input_ids_capture(model, inner, handle)


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(
        Idefics3Adapter("idefics3", ("idefics3",), "transformers Idefics3ForConditionalGeneration / Idefics3Model")
    )
    register(Idefics3Adapter("smolvlm", ("smolvlm",), "transformers SmolVLMForConditionalGeneration / SmolVLMModel"))
