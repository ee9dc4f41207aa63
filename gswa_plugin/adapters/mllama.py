"""Llama 3.2 Vision (transformers ``MllamaForConditionalGeneration``): a cross-attention host.

Mllama does not put image tokens in the prompt. Its vision model returns
``[batch, images, tiles, patches, dim]``; the projector (one ``nn.Linear``, no norm) maps that to
the text width, and the result reaches the language model as ``cross_attention_states``, which
every cross-attention layer turns into keys and values. There is no global thumbnail: each image
is cut into up to ``max_num_tiles`` tiles (padded with empty tiles, marked by
``aspect_ratio_mask``), so GSWA runs with ``global_position: none`` (the mean of the tiles
stands in for the global summary).

Where a tile's scalar ``w`` survives: a forward hook on the projector multiplies each real tile's
projected states by ``w`` (padding tiles keep weight 1). In each cross-attention layer,
``k = k_norm(k_proj(w x))`` is RMS-normalised per head, so the keys, and with them the attention
probabilities, do not see ``w``; ``v = v_proj(w x) = w v_proj(x)`` has no norm, so the tile's
values, and its share of every cross-attention output, are scaled by exactly ``w``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from gswa_plugin.adapters._base import Adapter, model_type, resolve_path
from gswa_plugin.adapters._layout import refuse_cls_summary
from gswa_plugin.errors import LayoutError
from gswa_plugin.hookspecs import hookimpl
from gswa_plugin.layout import TileLayout


class MllamaAdapter(Adapter):
    name = "mllama"
    description = "transformers MllamaForConditionalGeneration (Llama 3.2 Vision): weights act on the cross-attention states"
    global_position = "none"
    has_cls = False

    def matches(self, model: nn.Module) -> bool:
        return model_type(model) == "mllama"

    def _inner(self, model: nn.Module) -> nn.Module:
        return model if hasattr(model, "multi_modal_projector") else model.model

    def required_modules(self, model: nn.Module) -> dict[str, Any]:
        inner = "model." if not hasattr(model, "multi_modal_projector") else ""
        return {f"{inner}multi_modal_projector": None, f"{inner}vision_model": None}

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        refuse_cls_summary(self.name, config)
        return model.config.text_config.hidden_size

    def install(self, model: nn.Module, handle: Any) -> None:
        inner = self._inner(model)
        projector = resolve_path(inner, "multi_modal_projector")

        def capture(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            handle.state["mllama_tiles"] = kwargs.get("aspect_ratio_mask")

        def release(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            handle.state.pop("mllama_tiles", None)

        def weigh(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            mask = handle.state.get("mllama_tiles")
            if output.dim() != 5:
                raise LayoutError(
                    f"the Mllama projector gave a tensor of shape {tuple(output.shape)}, not [batch, images, tiles, "
                    "patches, dim]: this transformers version lays Mllama out differently; report it"
                )
            b, n_img, n_tiles = output.shape[:3]
            if mask is None:
                mask = torch.ones(b, n_img, n_tiles, dtype=torch.long, device=output.device)
            mask = mask.bool()
            real = mask.flatten()  # row-major over (sample, image, tile)
            per_image = mask.sum(-1).flatten()
            counts = tuple(int(c) for c in per_image.tolist() if c > 0)
            flat = output.reshape(b * n_img * n_tiles, *output.shape[3:])
            feats = flat[real]
            layout = TileLayout(counts, "none")
            weighted = handle.process(feats, feats.mean(dim=1), layout)
            out = flat.clone()
            out[real] = weighted
            return out.view_as(output)

        h1 = inner.register_forward_pre_hook(capture, with_kwargs=True)
        h2 = inner.register_forward_hook(release, with_kwargs=True)
        h3 = projector.register_forward_hook(weigh)
        for h in (h1, h2, h3):
            handle.add_undo(h.remove)


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(MllamaAdapter())
