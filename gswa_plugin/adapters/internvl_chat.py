"""InternVL2 as released: the remote-code ``InternVLChatModel`` (``model_type: internvl_chat``).

The class SleighVL (InternVL2-2B + GSWA) was built on, loaded with ``trust_remote_code=True``.
Only attributes and methods the released class has are used, so the adapter works on the real
class as on the stand-in in [`gswa_plugin.testing.standins.internvl_chat`][gswa_plugin.testing.standins.internvl_chat].

Seam: ``extract_feature(pixel_values)``, which returns ``[tiles, num_image_token, D]`` after
``mlp1`` (LayerNorm-led, so the weights are applied to its output). Every caller of the seam
splices its output into the ``<IMG_CONTEXT>`` embeddings: ``forward`` (training), ``generate``,
``chat`` and ``batch_chat``.

Summary: the InternViT CLS token of the layer ``extract_feature`` reads (``select_layer``),
captured by a forward hook on ``vision_model`` before ``extract_feature`` drops it.

Tiles per image, in order of precedence: ``gswa_plugin.set_tiles``; ``num_patches_list``
(or ``image_counts``) given to ``chat``/``batch_chat``; the runs of ``img_context_token_id`` in
``input_ids`` (``num_image_token`` per tile, one run per image) seen by ``forward`` or
``generate``. Tiles are row-major with the thumbnail LAST (present when an image has more than
one tile). In ``forward``, tiles whose ``image_flags`` is 0 (the dummy image of a text-only
sample, which ``forward`` discards) are left out of GSWA.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from gswa_plugin.adapters._base import Adapter, model_type, patch_method, summarise
from gswa_plugin.adapters._layout import views_per_run
from gswa_plugin.apply import placeholder_weights
from gswa_plugin.hookspecs import hookimpl

_IDS = "internvl_chat_input_ids"
_FLAGS = "internvl_chat_image_flags"
_PATCHES = "internvl_chat_num_patches"


def _bind(fn: Callable, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (``{}`` where the call does not fit the signature)."""
    try:
        return dict(inspect.signature(fn).bind_partial(*args, **kwargs).arguments)
    except TypeError:
        return {}


class InternVLChatAdapter(Adapter):
    name = "internvl_chat"
    description = "InternVL2 remote code InternVLChatModel (trust_remote_code; SleighVL's base)"
    global_position = "last"
    has_cls = True

    def matches(self, model: nn.Module) -> bool:
        return model_type(model) == "internvl_chat" or type(model).__name__ == "InternVLChatModel"

    def required_modules(self, model: nn.Module) -> dict[str, Any]:
        return {m: None for m in ("vision_model", "mlp1", "language_model", "extract_feature", "num_image_token")}

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        return model.config.vision_config.hidden_size

    def reference_parameter(self, model: nn.Module) -> torch.Tensor:
        return next(model.mlp1.parameters())

    def language_model(self, model: nn.Module) -> nn.Module | None:
        lm = model.language_model
        return getattr(lm, "model", lm)  # the decoder stack under the causal-LM head

    def position_weights(self, model: nn.Module, handle: Any, seq_len: int) -> torch.Tensor | None:
        ids = handle.state.get(_IDS)
        token = getattr(model, "img_context_token_id", None)
        if ids is None or token is None or ids.shape[-1] != seq_len:
            return None
        return placeholder_weights(
            handle, ids, token,
            "the input holds image-context tokens but GSWA saw no image features in this call; pass "
            "pixel_values with the input_ids (visual_features given to generate() bypass GSWA)",
        )

    def install(self, model: nn.Module, handle: Any) -> None:
        use_cls = self.use_cls(handle.config)

        def seen() -> dict[str, Any]:  # per thread: concurrent calls never mix
            return handle.state.setdefault("internvl_chat_seen", {})

        def vision_hook(module: nn.Module, args: tuple, output: Any) -> None:
            layer = getattr(model, "select_layer", -1)
            hidden = output.last_hidden_state if layer == -1 else output.hidden_states[layer]
            seen()["summaries"] = summarise(hidden, use_cls, True)

        h = model.vision_model.register_forward_hook(vision_hook)
        handle.add_undo(h.remove)

        @torch.compiler.disable  # host-side numpy on the ids' host copy
        def counts_now(n_views: int) -> list[int] | None:
            patches = handle.state.get(_PATCHES)
            if patches is not None:
                return list(patches)
            ids = handle.state.get(_IDS)
            token = getattr(model, "img_context_token_id", None)
            if ids is None or token is None:
                return None
            return views_per_run(handle.host_ids(ids), token, model.num_image_token)

        def make_extract(original: Callable) -> Callable:
            def extract_feature(pixel_values: torch.Tensor) -> torch.Tensor:
                seen().clear()
                feats = original(pixel_values)
                summaries = seen().pop("summaries")
                flags = handle.state.get(_FLAGS)
                real = None
                if flags is not None:
                    real = flags.reshape(-1)[: feats.shape[0]].to(feats.device) == 1
                    if bool(real.all()):
                        real = None
                if real is None:
                    layout = handle.layout_for(feats.shape[0], counts_now(feats.shape[0]))
                    return handle.process(feats, summaries, layout, pixel_values=pixel_values)
                # dummy tiles (image_flags 0) are discarded by forward: weigh only the real ones
                idx = real.nonzero(as_tuple=True)[0]
                layout = handle.layout_for(idx.numel(), counts_now(idx.numel()))
                weighted = handle.process(feats[idx], summaries[idx], layout, pixel_values=pixel_values[idx])
                return feats.index_put((idx,), weighted)

            return extract_feature

        handle.add_undo(patch_method(model, "extract_feature", make_extract))

        forward_fn = type(model).forward

        def pre_forward(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            call = _bind(forward_fn, (module,) + args, kwargs)
            handle.state[_IDS] = call.get("input_ids")
            handle.state[_FLAGS] = call.get("image_flags")

        def post_forward(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            handle.state.pop(_IDS, None)
            handle.state.pop(_FLAGS, None)

        h1 = model.register_forward_pre_hook(pre_forward, with_kwargs=True)
        h2 = model.register_forward_hook(post_forward, with_kwargs=True)
        handle.add_undo(h1.remove)
        handle.add_undo(h2.remove)

        def state_during(key: str, value_of: Callable[[dict[str, Any]], Any]) -> Callable[[Callable], Callable]:
            """A wrapper factory that keeps ``value_of(call arguments)`` in ``handle.state[key]``
            for the duration of the wrapped call."""

            def make(original: Callable) -> Callable:
                def wrapper(*args: Any, **kwargs: Any) -> Any:
                    before = handle.state.get(key)
                    handle.state[key] = value_of(_bind(original, args, kwargs))
                    try:
                        return original(*args, **kwargs)
                    finally:
                        handle.state[key] = before

                return wrapper

            return make

        def chat_patches(call: dict[str, Any]) -> list[int] | None:
            patches = call.get("image_counts") or call.get("num_patches_list")
            pixel_values = call.get("pixel_values")
            if patches is None and pixel_values is not None and "questions" not in call:
                patches = [pixel_values.shape[0]]  # chat(): one image of all the tiles, as the real chat() assumes
            return None if patches is None else [int(p) for p in patches]

        handle.add_undo(patch_method(model, "generate", state_during(_IDS, lambda call: call.get("input_ids"))))
        for method in ("chat", "batch_chat"):
            if hasattr(model, method):
                handle.add_undo(patch_method(model, method, state_during(_PATCHES, chat_patches)))


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(InternVLChatAdapter())
