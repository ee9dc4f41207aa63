"""The ``llava`` package: the LLaVA / LLaVA-NeXT training code (PyPI ``llava-torch``, or the
LLaVA-NeXT repository installed from source), not transformers' own LLaVA classes.

Its models (``LlavaLlamaForCausalLM``, ``LlavaMistralForCausalLM``, ``LlavaQwenForCausalLM``, ...)
all mix in ``llava.model.llava_arch.LlavaMetaForCausalLM``, which is how this adapter recognises
them; transformers' ``LlavaNextForConditionalGeneration`` does not, so the two never overlap.

Seam: ``encode_images(images)`` = ``mm_projector(vision_tower(images))``, called by
``prepare_inputs_labels_for_multimodal`` once on the views of every image of the batch
concatenated (``[views, tokens, D]`` after the projector). With ``image_aspect_ratio: anyres``
each image contributes its base image (the whole image resized to one tile) FIRST, then its
tiles in row-major order; the host splits the features per image afterwards and unpads and adds
newline tokens, so weights act before all of that. Views per image are read off the ``images``
argument of ``prepare_inputs_labels_for_multimodal`` (a list of ``[views_i, 3, H, W]`` tensors, a
``[B, views, 3, H, W]`` tensor, or ``[B, 3, H, W]`` for one view per image). Video entries of the
LLaVA-NeXT code (``modalities`` ``"video"``) are frames, not tiles: each frame counts as a
single-view image and keeps weight 1.

Summaries: the CLS token of the layer the tower selects (``mm_vision_select_layer``), read by a
hook on the tower's inner transformers vision model (CLIP); towers without CLS (SigLIP in
LLaVA-NeXT) use the mean of the tower's output tokens.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Callable

import torch
from torch import nn

from gswa_plugin.adapters._base import Adapter, patch_method, summarise
from gswa_plugin.errors import ConfigError, MissingModuleError
from gswa_plugin.hookspecs import hookimpl

#: Module of the mixin every model class of the llava package inherits from.
_ARCH_MODULE = "llava.model.llava_arch"


def is_llava_model(model: nn.Module) -> bool:
    """Whether ``model`` is a model class of the ``llava`` package (mixes in ``LlavaMetaForCausalLM``)."""
    return any(cls.__name__ == "LlavaMetaForCausalLM" and cls.__module__ == _ARCH_MODULE for cls in type(model).__mro__)


def _tower(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_vision_tower", None)
    return get() if callable(get) else None


def _tower_has_cls(tower: nn.Module) -> bool:
    """CLIP-like towers keep a CLS token in their hidden states; SigLIP towers have none."""
    cfg = getattr(tower, "config", None)
    model_type = str(getattr(cfg, "model_type", ""))
    return "siglip" not in model_type.lower() and "siglip" not in type(tower).__name__.lower()


def _views_per_image(images: Any, modalities: Any) -> list[int] | None:
    """Views each entry of ``images`` contributes to ``encode_images``, frames of a video as
    single views (``None`` where the argument does not say)."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 5:
            return [int(images.shape[1])] * int(images.shape[0])
        if images.dim() == 4:
            return [1] * int(images.shape[0])
        return None
    if isinstance(images, (list, tuple)):
        counts: list[int] = []
        for i, x in enumerate(images):
            if x is None:
                continue
            n = 1 if x.dim() == 3 else int(x.shape[0])
            is_video = isinstance(modalities, (list, tuple)) and i < len(modalities) and modalities[i] == "video"
            counts.extend([1] * n if is_video else [n])
        return counts
    return None


class LlavaTorchAdapter(Adapter):
    name = "llava_torch"
    description = (
        "the llava package (PyPI llava-torch, LLaVA-NeXT repository): LlavaLlamaForCausalLM and other "
        "LlavaMetaForCausalLM models, anyres base image first"
    )
    global_position = "first"
    has_cls = True

    def matches(self, model: nn.Module) -> bool:
        return is_llava_model(model)

    def required_modules(self, model: nn.Module) -> dict[str, Any]:
        return {m: None for m in ("encode_images", "prepare_inputs_labels_for_multimodal", "model.mm_projector")}

    def check(self, model: nn.Module) -> None:
        super().check(model)
        tower = _tower(model)
        if tower is None:
            raise MissingModuleError(
                f"{type(model).__name__} has no vision tower (`config.mm_vision_tower` is unset); GSWA weights "
                "the views of the vision tower, so build the model with one (llava's `initialize_vision_modules`)"
            )
        if not getattr(tower, "is_loaded", True) or not isinstance(getattr(tower, "vision_tower", None), nn.Module):
            raise MissingModuleError(
                f"the vision tower of this {type(model).__name__} is not loaded yet (llava loads it lazily); "
                "call `model.get_vision_tower().load_model()` (llava's training code does it in "
                "`initialize_vision_modules`) before enabling GSWA"
            )

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        return int(_tower(model).config.hidden_size)

    def reference_parameter(self, model: nn.Module) -> torch.Tensor:
        return next(model.get_model().mm_projector.parameters())

    def _use_cls(self, tower: nn.Module, config: Any) -> bool:
        tower_cls = _tower_has_cls(tower)
        if config.summary == "cls" and not tower_cls:
            raise ConfigError(
                [f"`summary: cls` but the vision tower ({type(tower).__name__}) has no CLS token; use `mean` or `auto`"]
            )
        return tower_cls if config.summary == "auto" else config.summary == "cls"

    def install(self, model: nn.Module, handle: Any) -> None:
        use_cls = self._use_cls(_tower(model), handle.config)

        def make_prepare(original: Callable) -> Callable:
            signature = inspect.signature(original)

            def prepare_inputs_labels_for_multimodal(*args: Any, **kwargs: Any) -> Any:
                try:
                    bound = signature.bind(*args, **kwargs)
                except TypeError:
                    bound = None
                if bound is not None:
                    handle.state["llava_views"] = _views_per_image(
                        bound.arguments.get("images"), bound.arguments.get("modalities")
                    )
                try:
                    return original(*args, **kwargs)
                finally:
                    handle.state.pop("llava_views", None)

            return prepare_inputs_labels_for_multimodal

        def make_encode(original: Callable) -> Callable:
            def encode_images(images: torch.Tensor) -> torch.Tensor:
                tower = _tower(model)
                seen: dict[str, torch.Tensor] = {}
                me = threading.get_ident()  # another thread's call runs the same tower: not ours

                def keep_tower_output(module: nn.Module, args: Any, output: Any) -> None:
                    if threading.get_ident() == me:
                        seen["tokens"] = output

                def keep_cls(module: nn.Module, args: Any, output: Any) -> None:
                    if threading.get_ident() != me:
                        return
                    hidden = getattr(output, "hidden_states", None)
                    layer = getattr(tower, "select_layer", -1)
                    states = hidden[layer] if hidden is not None else output.last_hidden_state
                    seen["cls"] = states[:, 0]

                hooks = [tower.register_forward_hook(keep_tower_output)]
                if use_cls:
                    hooks.append(tower.vision_tower.register_forward_hook(keep_cls))
                try:
                    feats = original(images)
                finally:
                    for h in hooks:
                        h.remove()
                if use_cls:
                    summaries = seen["cls"]
                else:
                    tokens_have_cls = getattr(tower, "select_feature", "patch") == "cls_patch"
                    summaries = summarise(seen["tokens"], use_cls=False, has_cls=tokens_have_cls)
                layout = handle.layout_for(feats.shape[0], handle.state.pop("llava_views", None))
                return handle.process(feats, summaries, layout, images=images)

            return encode_images

        handle.add_undo(patch_method(model, "prepare_inputs_labels_for_multimodal", make_prepare))
        handle.add_undo(patch_method(model, "encode_images", make_encode))


def llava_available() -> bool:
    """Whether the ``llava`` package can be imported (the adapter registers only then)."""
    import importlib.util

    try:
        return importlib.util.find_spec("llava") is not None
    except (ImportError, ValueError):
        return False


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    # Registered only where the llava package is installed: its models cannot exist elsewhere,
    # and the contract test needs a tiny llava model for every registered adapter.
    if llava_available():
        register(LlavaTorchAdapter())
