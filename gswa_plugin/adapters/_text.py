"""The request's text for the question-aware variants (``text_guided``, ``text_cross_attn``).

Host-agnostic: whatever the adapter, a forward pre-hook on the model and a wrapper around
``generate()`` read the call's ``input_ids``, look them up in the host's own input embedding table
(``model.get_input_embeddings()``) and average them over each sample's text positions (image
placeholders and padding left out). The result, ``[samples, embedding_dim]``, waits in
``handle.state['text']`` for the seam, where
[`GSWAHandle.process`][gswa_plugin.handle.GSWAHandle.process] gives each image its sample's
vector. Installed only when the configured variant reads text; the math stays in
[`gswa_plugin.weighting`][gswa_plugin.weighting].
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from gswa_plugin.adapters._base import _input_ids_from_call, patch_method
from gswa_plugin.errors import MissingModuleError

#: ``handle.state`` key of the pooled text of the call in progress.
TEXT_KEY = "text"


def input_embeddings(model: nn.Module) -> nn.Module:
    """The host's input embedding table (``get_input_embeddings()``, also on a ``language_model``)."""
    for owner in (model, getattr(model, "language_model", None)):
        get = getattr(owner, "get_input_embeddings", None)
        if callable(get):
            try:
                table = get()
            except (AttributeError, NotImplementedError):
                continue
            if isinstance(table, nn.Module) and hasattr(table, "weight"):
                return table
    raise MissingModuleError(
        f"the question-aware variants read the prompt through the host's input embedding table, but this "
        f"{type(model).__name__} has no `get_input_embeddings()`; pick an image-only variant "
        "(`self_attn`, `cross_attn` or `cosine`)"
    )


def text_dim(model: nn.Module) -> int:
    """Width of the host's input embeddings (the text vector's width)."""
    return int(input_embeddings(model).weight.shape[-1])


def _special_ids(model: nn.Module) -> list[int]:
    """Image placeholder ids of the host's config (left out of the pooled text)."""
    ids = []
    for cfg in (getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
        for name in ("image_token_id", "image_token_index", "img_context_token_id"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value >= 0:
                ids.append(value)
    ctx = getattr(model, "img_context_token_id", None)  # InternVL-chat sets it on the model
    if isinstance(ctx, int):
        ids.append(ctx)
    return sorted(set(ids))


def _pad_id(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for c in (cfg, getattr(cfg, "text_config", None), getattr(cfg, "llm_config", None)):
        value = getattr(c, "pad_token_id", None)
        if isinstance(value, int):
            return value
    return None


def pooled_text(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean input embedding of each row's text positions: ``[batch, embedding_dim]``.

    The rows of the table's ``weight`` are averaged (a host that scales its embeddings, such as
    Gemma 3, differs by that constant factor, which the scorer's LayerNorm removes).

    Image placeholders are left out, and so is padding (``attention_mask == 0``; without a mask,
    the config's ``pad_token_id``). A row without a text position gets zeros. The table is read
    detached: no gradient flows from GSWA into the host's embeddings.
    """
    table = input_embeddings(model)
    ids = input_ids.to(table.weight.device)
    keep = ids >= 0  # negative ids are placeholders outside the table (llava's IMAGE_TOKEN_INDEX)
    for special in _special_ids(model):
        keep &= ids != special
    if attention_mask is not None and attention_mask.shape == ids.shape:
        keep &= attention_mask.to(ids.device).bool()
    else:
        pad = _pad_id(model)
        if pad is not None:
            keep &= ids != pad
    # Detached: the text path trains GSWA's own text projection, never the host's embedding table.
    # With the table attached, its backward was a dense gradient of the whole table (92,553 x 2,048
    # at InternVL2-2B shapes): +141 ms and +655 MiB per training step in `gswa bench` (issue 18),
    # for a side effect a plugin should not have (GSWA's loss moving the host's word embeddings).
    weight = table.weight.detach()
    share = keep.to(weight.dtype)
    share = share / share.sum(1, keepdim=True).clamp_min(1.0)
    # the weighted mean of the table's rows, without materialising [batch, seq, dim]
    return F.embedding_bag(ids.clamp_min(0), weight, per_sample_weights=share, mode="sum")


def capture_text(model: nn.Module, handle: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
    """Keep the pooled text of ``input_ids`` in ``handle.state['text']`` for the seam (what the
    capture hooks below do; also called by the token budget, which runs the seam before
    ``generate()`` is entered, and by the cost benchmark, which calls the seam directly)."""
    handle.state[TEXT_KEY] = pooled_text(model, input_ids, attention_mask)


def install_text_capture(model: nn.Module, handle: Any) -> None:
    """Keep the pooled text of every call that carries ``input_ids`` in ``handle.state['text']``
    for the seam: a forward pre-hook on ``model`` (training, evaluation, each ``generate`` step)
    and a wrapper around ``generate()`` (hosts that encode the images before the first step)."""
    input_embeddings(model)  # a host without the table fails at enable(), not at its first call

    def store(args: tuple, kwargs: dict[str, Any]) -> bool:
        ids = _input_ids_from_call(args, kwargs)
        if ids is None:
            ids = kwargs.get("inputs") if isinstance(kwargs.get("inputs"), torch.Tensor) else None
        if ids is None or ids.dim() != 2:
            return False
        capture_text(model, handle, ids, kwargs.get("attention_mask"))
        return True

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        # decode steps of generate() bring one new token and no image: keep the prompt's text
        if kwargs.get("pixel_values") is not None or TEXT_KEY not in handle.state:
            store(args, kwargs)

    def post_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if not handle.state.get("text_in_generate"):
            handle.state.pop(TEXT_KEY, None)

    h1 = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    h2 = model.register_forward_hook(post_hook, with_kwargs=True)
    handle.add_undo(h1.remove)
    handle.add_undo(h2.remove)

    if callable(getattr(model, "generate", None)):

        def make_generate(original: Callable) -> Callable:
            def generate(*args: Any, **kwargs: Any) -> Any:
                outer = handle.state.get("text_in_generate", False)
                store(args, kwargs)
                handle.state["text_in_generate"] = True
                try:
                    return original(*args, **kwargs)
                finally:
                    handle.state["text_in_generate"] = outer
                    if not outer:
                        handle.state.pop(TEXT_KEY, None)

            return generate

        handle.add_undo(patch_method(model, "generate", make_generate))
