"""A third-party GSWA plugin: one adapter, written against the public API only.

It teaches GSWA a host family by registering an :class:`~gswa_plugin.adapters.Adapter` through
the ``gswa_register_adapters`` hook, exactly as the built-in adapters do. The host here is
transformers' LLaVA-NeXT (``LlavaNextForConditionalGeneration``), which already has a built-in
adapter (``llava_next``, which patches ``pack_image_features``); this one, ``my_llava_next``,
reaches the same result with forward hooks instead, to show the other way in:

1. a wrapper around ``get_image_features`` (signature kept by ``patch_method``, because
   ``generate()`` reads it) records how many views each image has, from ``image_sizes``;
2. a forward hook on the vision tower takes each view's CLS token of the selected layer;
3. a forward hook on the projector hands the projected views to ``handle.process`` and returns
   the weighted ones, which the host then unpads and packs as usual.

Every patch registers its undo with ``handle.add_undo``, so ``gswa_plugin.disable(model)``
restores the model exactly. Publish the module through an entry point of your package::

    # pyproject.toml of the plugin package
    [project.entry-points.gswa]
    my_llava_next = "my_package.custom_adapter"

and select it with ``adapter: my_llava_next`` in the ``gswa:`` block (it matches the same
models as the built-in one, which is registered first and so wins when no adapter is named).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from gswa_plugin.adapters import Adapter, patch_method, summarise
from gswa_plugin.layout import TileLayout
from gswa_plugin.hookspecs import hookimpl


class MyLlavaNextAdapter(Adapter):
    name = "my_llava_next"
    description = "LLaVA-NeXT through forward hooks (docs example)"
    global_position = "first"  # the whole resized image comes before the tiles
    has_cls = True  # CLIP

    def matches(self, model: nn.Module) -> bool:
        return getattr(model.config, "model_type", None) == "llava_next"

    def required_modules(self, model: nn.Module) -> dict[str, Any]:
        return {name: None for name in ("model.vision_tower", "model.multi_modal_projector", "model.get_image_features")}

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        return model.config.vision_config.hidden_size

    def install(self, model: nn.Module, handle: Any) -> None:
        inner, cfg = model.model, model.config
        use_cls = self.use_cls(handle.config)

        def make_get_image_features(original: Callable) -> Callable:
            def get_image_features(pixel_values: torch.Tensor, image_sizes: torch.Tensor, *args: Any, **kwargs: Any):
                handle.state["views"] = [
                    image_size_to_num_patches(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
                    for size in image_sizes
                ]
                try:
                    return original(pixel_values, image_sizes, *args, **kwargs)
                finally:  # nothing leaks into a later call (e.g. one that fails half-way)
                    handle.state.pop("views", None)
                    handle.state.pop("summaries", None)

            return get_image_features

        def on_vision_tower(module: nn.Module, args: tuple, output: Any) -> None:
            if "views" in handle.state:
                hidden = output.hidden_states[cfg.vision_feature_layer]
                handle.state["summaries"] = summarise(hidden, use_cls, self.has_cls)

        def on_projector(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            summaries = handle.state.pop("summaries", None)
            if summaries is None:  # not an image call of get_image_features
                return None
            layout = TileLayout(tuple(handle.state["views"]), self.global_position)
            return handle.process(output, summaries, layout)  # returned value replaces the output

        handle.add_undo(patch_method(inner, "get_image_features", make_get_image_features))
        handle.add_undo(inner.vision_tower.register_forward_hook(on_vision_tower).remove)
        handle.add_undo(inner.multi_modal_projector.register_forward_hook(on_projector).remove)


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(MyLlavaNextAdapter())
