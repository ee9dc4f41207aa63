"""The seam shared by transformers' LLaVA-NeXT-style "anyres" hosts (``pack_image_features``).

``get_image_features`` runs the vision tower on every view of every image, selects the
``vision_feature_layer`` hidden states (dropping CLS for strategy ``default``), projects them and
splits them per image; ``pack_image_features(image_features, image_sizes, ...)`` then receives a
tuple with one ``[views_i, tokens, D]`` tensor per image (base image FIRST, then row-major tiles),
stitches the tiles into a grid, unpads it, inserts newline tokens (and, for OneVision, shrinks
large grids). The adapter weights the projected views on the way INTO ``pack_image_features``,
so weights act before unpadding, newlines and shrinking, and the views per image are read off
the tuple itself.

The per-view summary comes from the vision tower's output of the same call (the selected
layer's CLS token or the mean of its tokens), captured by a forward hook on the vision tower
that is active only while the wrapped ``get_image_features`` runs, so videos (which use the same
tower) are not mistaken for images.

For the ``value`` and ``attn_bias`` modes, the weight of every packed token is found by running
the host's own ``pack_image_features`` on one-channel weight maps
([`packed_token_weights`][gswa_plugin.adapters._anyres.packed_token_weights]).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from gswa_plugin.adapters._base import Adapter, model_type, patch_method, resolve_path, summarise
from gswa_plugin.adapters._layout import refuse_cls_summary
from gswa_plugin.apply import gather_weights, image_slots
from gswa_plugin.errors import LayoutError
from gswa_plugin.layout import TileLayout

_LAYERS = "anyres_layers"
_VISION = "anyres_vision"
_TOKEN_WEIGHTS = "anyres_token_weights"
_CALL_IDS = "anyres_call_input_ids"


def inner_model(model: nn.Module) -> nn.Module:
    """The module owning ``pack_image_features`` (``model.model`` for the generation class)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "vision_tower"):
        return inner
    return model


def _as_list(layer: Any) -> list[int]:
    return list(layer) if isinstance(layer, (list, tuple)) else [int(layer)]


class AnyresPackAdapter(Adapter):
    """Base of adapters whose seam is the inner model's ``pack_image_features``.

    Subclasses set ``name``, ``description``, ``model_types`` and ``has_cls``.

    Attributes:
        model_types: ``config.model_type`` values this adapter handles.
    """

    global_position = "first"
    model_types: tuple[str, ...] = ()

    def matches(self, model: nn.Module) -> bool:
        return model_type(model) in self.model_types

    def _prefix(self, model: nn.Module) -> str:
        return "model." if inner_model(model) is not model else ""

    def required_modules(self, model: nn.Module) -> dict[str, Any]:
        prefix = self._prefix(model)
        names = ("vision_tower", "multi_modal_projector", "get_image_features", "pack_image_features")
        return {f"{prefix}{m}": None for m in names}

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        if not self.has_cls:
            refuse_cls_summary(self.name, config)
        return model.config.vision_config.hidden_size * len(_as_list(model.config.vision_feature_layer))

    def reference_parameter(self, model: nn.Module) -> torch.Tensor:
        return next(resolve_path(model, self._prefix(model) + "multi_modal_projector").parameters())

    def language_model(self, model: nn.Module) -> nn.Module | None:
        return inner_model(model).language_model

    def position_weights(self, model: nn.Module, handle: Any, seq_len: int) -> torch.Tensor | None:
        ids = handle.state.get(_CALL_IDS)  # set only while a call with images runs
        token = model.config.image_token_id
        if ids is None or ids.shape[-1] != seq_len:
            return None
        per_token = handle.state.get(_TOKEN_WEIGHTS)
        if per_token is None:
            per_token = torch.ones(0, device=ids.device)
        slots = image_slots(
            ids, token, per_token.shape[0], per_token.device, handle=handle, what="the packed image tokens"
        )
        return None if slots is None else gather_weights(per_token, slots)

    def install(self, model: nn.Module, handle: Any) -> None:
        inner = inner_model(model)
        cfg = model.config
        use_cls = self.use_cls(handle.config)
        adapter = self

        def make_get_image_features(original: Callable) -> Callable:
            signature = inspect.signature(original)

            def get_image_features(*args: Any, **kwargs: Any) -> Any:
                layer = signature.bind_partial(*args, **kwargs).arguments.get("vision_feature_layer")
                handle.state[_LAYERS] = _as_list(layer if layer is not None else cfg.vision_feature_layer)
                try:
                    return original(*args, **kwargs)
                finally:
                    handle.state.pop(_LAYERS, None)
                    handle.state.pop(_VISION, None)

            return get_image_features

        def capture_vision(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            if _LAYERS in handle.state:
                pixels = args[0] if args else kwargs.get("pixel_values")
                handle.state[_VISION] = (output, pixels)

        def make_pack(original: Callable) -> Callable:
            def pack_image_features(image_features: Any, image_sizes: Any, *args: Any, **kwargs: Any) -> Any:
                captured = handle.state.pop(_VISION, None)
                if captured is None:
                    raise LayoutError(
                        f"GSWA ('{adapter.name}') weights the views inside `get_image_features`, which also runs "
                        "the vision tower that the summaries come from; `pack_image_features` was called on its "
                        "own. Call the model (or `get_image_features`) instead, or `gswa_plugin.disable(model)`."
                    )
                vision, pixels = captured
                hidden = [vision.hidden_states[layer] for layer in handle.state.get(_LAYERS, [])]
                summaries = torch.cat([summarise(h, use_cls, adapter.has_cls) for h in hidden], dim=-1)
                counts = [int(f.shape[0]) for f in image_features]
                if summaries.shape[0] != sum(counts):
                    raise LayoutError(
                        f"the '{adapter.name}' vision tower encoded {summaries.shape[0]} views but "
                        f"`pack_image_features` received {sum(counts)} ({counts} per image)"
                    )
                # The tuple is split per image by the host itself: no inference, no set_tiles() needed.
                layout = TileLayout(tuple(counts), adapter.global_position)
                weighted = handle.process(
                    torch.cat(list(image_features), dim=0), summaries, layout, pixel_values=pixels
                )
                if handle.config.mode != "embed":
                    handle.state[_TOKEN_WEIGHTS] = packed_token_weights(
                        original, handle.last_batch.weights, counts, image_features, image_sizes, args, kwargs
                    )
                return original(tuple(torch.split(weighted, counts, dim=0)), image_sizes, *args, **kwargs)

            return pack_image_features

        handle.add_undo(patch_method(inner, "get_image_features", make_get_image_features))
        hook = inner.vision_tower.register_forward_hook(capture_vision, with_kwargs=True)
        handle.add_undo(hook.remove)
        handle.add_undo(patch_method(inner, "pack_image_features", make_pack))
        handle.add_undo(lambda: handle.state.pop(_TOKEN_WEIGHTS, None))

        def call_pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            # Image positions of a call are those of its input_ids when the call brings images
            # (pixel values, or features generate() encoded before its first step); a generated
            # token that happens to be the image token is text.
            ids = kwargs.get("input_ids", args[0] if args else None)
            encoded = kwargs.get("mm_encoder_outputs") or {}
            has_images = kwargs.get("pixel_values") is not None or encoded.get("image") is not None
            handle.state[_CALL_IDS] = ids if has_images and isinstance(ids, torch.Tensor) else None

        def call_post_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            handle.state.pop(_CALL_IDS, None)

        for h in (
            inner.register_forward_pre_hook(call_pre_hook, with_kwargs=True),
            inner.register_forward_hook(call_post_hook, with_kwargs=True),
        ):
            handle.add_undo(h.remove)


def packed_token_weights(
    pack: Callable,
    view_weights: torch.Tensor,
    counts: list[int],
    image_features: Any,
    image_sizes: Any,
    args: tuple,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """The weight of every token ``pack`` puts out, in its order: ``pack`` itself is run on
    one-channel maps holding each view's weight, with a newline of weight 1, so unpadding,
    newlines and OneVision's shrinking (which interpolates neighbouring tiles' weights) are
    followed exactly. Differentiable with respect to ``view_weights``."""
    maps = [
        w.to(f.dtype)[:, None, None].expand(f.shape[0], f.shape[1], 1)
        for w, f in zip(torch.split(view_weights, counts), image_features)
    ]
    bound = inspect.signature(pack).bind(tuple(maps), image_sizes, *args, **kwargs)
    if bound.arguments.get("image_newline") is not None:
        bound.arguments["image_newline"] = maps[0].new_ones(1)
    packed, _ = pack(*bound.args, **bound.kwargs)
    return torch.cat([p[:, 0] for p in packed]).float()
