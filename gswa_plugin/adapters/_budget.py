"""The host side of the token budget (``budget:`` in the config): the language model receives
only the kept visual tokens, and the host's own checks still pass.

Installed by ``enable()`` when the config has an active ``budget`` (``keep: 1.0`` installs
nothing, so the model is bit-identical to GSWA without a budget). Three patches on the model
instance, each undone by ``disable()``:

1. ``forward`` and ``generate``: before the host runs, the vision side and GSWA run once (the
   adapter's seam, called directly), [`select`][gswa_plugin.budget.select] picks the tokens, and
   the call's ``input_ids`` lose the image placeholders of the dropped tokens (with their
   ``attention_mask`` and ``labels`` entries). Rows that end up shorter than others are padded
   again on the side the call was padded on (left when it was not padded and ``generate`` runs,
   else right). The host then runs on the shortened call, so its placeholder count check, the
   attention mask, the position ids and the KV cache are all consistent by construction.
2. The seam: inside that host call it returns the kept features, in order, without running the
   vision tower again.
3. ``generate`` gives back the caller's prompt followed by the new tokens, so
   ``out[:, input_ids.shape[1]:]`` still slices the answer.

The ``value``/``attn_bias`` modes see, during the host call, one weight per kept token (its
tile's weight): their per-position weights follow the shortened placeholders.

Supported hosts (``HOSTS``): native InternVL (``internvl``:
``[views, tokens, dim]`` filled into the placeholders view after view) and the anyres hosts
LLaVA-NeXT and LLaVA-OneVision (``llava_next``, ``llava_onevision``: one packed token list per
image, after unpadding, newline insertion and OneVision's shrinking). On the anyres hosts the
view of every packed token is found by replaying the host's own packing on one-hot view maps, and
the image-newline tokens are always kept (they are not counted in the budget): they mark the rows
of the grid the language model was trained on, and a few per image cost little.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from gswa_plugin import budget as budget_math
from gswa_plugin.adapters._anyres import _TOKEN_WEIGHTS
from gswa_plugin.adapters._base import patch_method, wants_tuple
from gswa_plugin.adapters._text import capture_text
from gswa_plugin.errors import ConfigError, LayoutError
from gswa_plugin.layout import TileBatch, TileLayout


def _inner(model: nn.Module) -> nn.Module:
    """The module owning the seam (``model.model`` for the generation classes)."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "vision_tower") else model


def _seam_kwargs(model: nn.Module, seam: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The image arguments of the call for the seam ``get_image_features``: those it takes, from
    the call or else (when empty) from ``model.config``."""
    out = {}
    for name in inspect.signature(seam).parameters:
        if name in ("pixel_values", "kwargs", "return_dict"):
            continue
        value = kwargs.get(name)
        if value is None:
            value = getattr(model.config, name, None)
        if value is not None:
            out[name] = value
    return out


def _grid_tokens(handle: Any, inner: nn.Module, out: Any, call: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """InternVL: ``pooler_output`` is ``[views, tokens, dim]`` filled view after view."""
    feats = out.pooler_output
    view_of = torch.arange(feats.shape[0], device=feats.device).repeat_interleave(feats.shape[1])
    return feats.reshape(-1, feats.shape[-1]), view_of


def _packed_tokens(handle: Any, inner: nn.Module, out: Any, call: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaVA-NeXT / OneVision: ``pooler_output`` holds one packed ``[tokens_i, dim]`` per image
    (unpadded grid, newline tokens, OneVision's shrinking). The view of every packed token is
    found by running the host's own packing on one-hot view maps (newline: all zero, view -1;
    where OneVision interpolates between tiles, the view with the larger share)."""
    packed = torch.cat(list(out.pooler_output), dim=0)
    pack_call = handle.state.pop("budget_pack_call", None)
    batch = handle.last_batch
    if pack_call is None or batch is None:  # pragma: no cover - the seam always packs
        raise LayoutError("the budget found no packing call in this forward")
    image_sizes, args, kwargs = pack_call
    counts = batch.layout.views_per_image
    n_views, n_tokens = batch.layout.num_views, batch.features.shape[1]
    onehot = torch.eye(n_views, dtype=packed.dtype, device=packed.device)[:, None, :].expand(n_views, n_tokens, n_views)
    maps = tuple(torch.split(onehot, list(counts), dim=0))
    pack = type(inner).pack_image_features.__get__(inner)
    bound = inspect.signature(pack).bind(maps, image_sizes, *args, **kwargs)
    if bound.arguments.get("image_newline") is not None:
        bound.arguments["image_newline"] = packed.new_zeros(n_views)
    view_maps, _ = pack(*bound.args, **bound.kwargs)
    shares = torch.cat(list(view_maps), dim=0)
    view_of = torch.where(shares.sum(-1) > 0.5, shares.argmax(-1), torch.full_like(shares[:, 0], -1).long())
    return packed, view_of


@dataclass(frozen=True)
class _Host:
    """How the budget finds a host's visual tokens."""

    tokens: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (out, call) -> flat tokens, view of each
    set_kept: Callable[[Any, torch.Tensor], None]  # put the kept tokens into the seam's output
    pack: bool  # the seam packs per image (record the packing call)


def _set_grid(out: Any, kept: torch.Tensor) -> None:
    out.pooler_output = kept[None]


def _set_packed(out: Any, kept: torch.Tensor) -> None:
    out.pooler_output = (kept,)  # the host concatenates the per-image blocks


HOSTS: dict[str, _Host] = {
    "internvl": _Host(_grid_tokens, _set_grid, pack=False),
    "llava_next": _Host(_packed_tokens, _set_packed, pack=True),
    "llava_onevision": _Host(_packed_tokens, _set_packed, pack=True),
}


@dataclass
class BudgetPlan:
    """What the budget did to the latest call (``handle.last_budget``).

    Attributes:
        selection: the [`Selection`][gswa_plugin.budget.Selection] of the call's views.
        input_ids: the shortened ``input_ids`` the host received.
        positions: ``[batch, new_len]`` index of every position of the shortened call in the
            caller's ``input_ids`` (-1 where padding was added).
    """

    selection: budget_math.Selection
    input_ids: torch.Tensor
    positions: torch.Tensor


def shorten(
    input_ids: torch.Tensor,
    keep_flat: torch.Tensor,
    token: int,
    pad: dict[str, tuple[torch.Tensor | None, Any]],
    left: bool,
) -> tuple[dict[str, torch.Tensor | None], torch.Tensor]:
    """Drop the placeholders of dropped tokens from ``input_ids`` and the tensors aligned with it.

    Args:
        input_ids: ``[batch, seq]``.
        keep_flat: one flag per placeholder, in row-major order (the host's fill order).
        token: the placeholder id.
        pad: ``name -> (tensor [batch, seq] or None, fill value of added padding)``; ``input_ids``
            must be one of them.
        left: pad shortened rows on the left (else on the right).

    Returns:
        The shortened tensors by name, and ``[batch, new_len]`` original positions (-1 = padding).
    """
    is_image = input_ids == token
    n = int(is_image.sum())
    if n != keep_flat.numel():
        raise LayoutError(
            f"the input holds {n} image placeholder tokens but the budget selected among {keep_flat.numel()} image "
            "tokens; pass the input_ids the processor made with these pixel_values"
        )
    keep = ~is_image
    keep[is_image] = keep_flat.to(keep.device)
    lengths = keep.sum(dim=1)
    new_len = int(lengths.max())
    dest = keep.cumsum(dim=1) - 1
    if left:
        dest = dest + (new_len - lengths)[:, None]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(keep)
    out: dict[str, torch.Tensor | None] = {}
    for name, (tensor, fill) in pad.items():
        if tensor is None:
            out[name] = None
            continue
        new = torch.full((tensor.shape[0], new_len), fill, dtype=tensor.dtype, device=tensor.device)
        new[rows[keep], dest[keep]] = tensor[keep]
        out[name] = new
    positions = torch.full((input_ids.shape[0], new_len), -1, dtype=torch.long, device=input_ids.device)
    positions[rows[keep], dest[keep]] = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(keep)[keep]
    return out, positions


def _pad_id(model: nn.Module) -> int:
    for cfg in (getattr(model, "generation_config", None), model.config, getattr(model.config, "text_config", None)):
        value = getattr(cfg, "pad_token_id", None)
        if isinstance(value, int):
            return value
    return 0


def install(model: nn.Module, handle: Any) -> None:
    """Patch ``model`` for ``handle.config.budget`` (nothing when it is empty or keeps everything).

    Raises:
        ConfigError: the adapter's host has no budget support.
    """
    spec = handle.config.budget
    if spec is None or not spec.active:
        return
    host = HOSTS.get(handle.adapter.name)
    if host is None:
        raise ConfigError([
            f"`budget` is not supported with the '{handle.adapter.name}' adapter (supported: {', '.join(HOSTS)}); "
            "remove `budget` or set `keep: 1.0`"
        ])
    inner = _inner(model)
    token = int(model.config.image_token_id)

    def make_seam(original: Callable) -> Callable:
        def seam(*args: Any, **kwargs: Any) -> Any:
            cached = handle.state.get("budget_output")
            if cached is None:
                return original(*args, **kwargs)
            handle.state["process_calls"] = handle.state.get("process_calls", 0) + 1  # GSWA ran for this call
            return cached.to_tuple() if wants_tuple(inner, kwargs) else cached

        return seam

    def prepare(kwargs: dict[str, Any], generating: bool) -> tuple[dict[str, Any], BudgetPlan, TileBatch] | None:
        ids, pixels = kwargs.get("input_ids"), kwargs.get("pixel_values")
        if pixels is None:
            return None
        if ids is None:
            raise LayoutError(
                "the token budget shortens `input_ids`, and this call brought pixel_values without them "
                "(inputs_embeds?); pass input_ids, or enable GSWA without `budget`"
            )
        if kwargs.get("position_ids") is not None:
            raise LayoutError(
                "the token budget shortens the call, so explicit position_ids no longer fit; leave position_ids "
                "out (the host derives them), or enable GSWA without `budget`"
            )
        handle.state["input_ids"] = ids
        handle.prefetch_ids(ids)
        if generating and getattr(handle.module, "uses_text", False):
            # the seam runs here, before generate()'s own text capture: a question-aware variant
            # reads the prompt now (a forward's pre-hook has already pooled it)
            capture_text(model, handle, ids, kwargs.get("attention_mask"))
        seam = inner.get_image_features
        out = seam(pixel_values=pixels, return_dict=True, **_seam_kwargs(model, seam, kwargs))
        batch = handle.last_batch
        feats, view_of = host.tokens(handle, inner, out, kwargs)
        sel = budget_math.select_tokens(
            feats, view_of, batch.weights, batch.summaries, batch.layout, spec.keep, spec.method, spec.in_tile,
            spec.thumbnail_share, spec.sharpness, handle.config.cosine_temperature, spec.seed,
        )
        if not host.pack:  # a [views, tokens] grid
            sel.shape = (batch.layout.num_views, batch.features.shape[1])
        kept = sel.gather(feats)
        host.set_kept(out, kept)
        mask = kwargs.get("attention_mask")
        if mask is not None and bool((mask[:, 0] == 0).any()):
            left = True
        elif mask is not None and bool((mask[:, -1] == 0).any()):
            left = False
        else:
            left = generating
        if mask is None:
            mask = torch.ones_like(ids)
        new, positions = shorten(
            ids, sel.flat_mask, token,
            {"input_ids": (ids, _pad_id(model)), "attention_mask": (mask, 0), "labels": (kwargs.get("labels"), -100)},
            left,
        )
        call = dict(kwargs)
        call.update({k: v for k, v in new.items() if k in kwargs or k == "attention_mask"})
        handle.state["budget_output"] = out
        # value/attn_bias: one weight per kept token (its view's; 1 outside every view), for the
        # shortened placeholders
        views = sel.view_of_kept()
        weights = torch.where(views >= 0, batch.weights[views.clamp_min(0)], torch.ones_like(batch.weights[:1]))
        per_token = TileBatch(
            features=kept[:, None], summaries=kept.new_zeros(kept.shape[0], 1),
            layout=TileLayout((1,) * kept.shape[0], "none"), weights=weights,
        ) if kept.shape[0] else batch
        if host.pack and handle.config.mode != "embed":
            handle.state[_TOKEN_WEIGHTS] = weights.float()
        handle.last_budget = BudgetPlan(sel, new["input_ids"], positions)
        return call, handle.last_budget, per_token

    def run(original: Callable, call: dict[str, Any], per_token: TileBatch) -> Any:
        real = handle.last_batch
        if handle.config.mode != "embed":
            handle.last_batch = per_token
        try:
            return original(**call)
        finally:
            handle.last_batch = real
            handle.state.pop("budget_output", None)

    def make_forward(original: Callable) -> Callable:
        signature = inspect.signature(original)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if handle.state.get("budget_generating"):
                return original(*args, **kwargs)
            kwargs = dict(signature.bind_partial(*args, **kwargs).arguments)
            kwargs.update(kwargs.pop("kwargs", {}))
            prepared = prepare(kwargs, generating=False)
            if prepared is None:
                return original(**kwargs)
            call, _, per_token = prepared
            return run(original, call, per_token)

        return forward

    def make_generate(original: Callable) -> Callable:
        def generate(*args: Any, **kwargs: Any) -> Any:
            if args:
                kwargs["input_ids"] = args[0]
            elif "inputs" in kwargs and "input_ids" not in kwargs:
                kwargs["input_ids"] = kwargs.pop("inputs")
            gen_cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)
            for name in ("num_beams", "num_return_sequences"):
                value = kwargs.get(name, getattr(gen_cfg, name, 1)) or 1
                if int(value) > 1 and kwargs.get("pixel_values") is not None:
                    raise LayoutError(
                        f"the token budget does not support generate({name}={value}) yet (the host repeats the "
                        f"rows after the budget shortened them); use {name}=1, or set_budget(model, None)"
                    )
            prepared = prepare(kwargs, generating=True)
            if prepared is None:
                return original(**kwargs)
            call, plan, per_token = prepared
            handle.state["budget_generating"] = True
            try:
                out = run(original, call, per_token)
            finally:
                handle.state["budget_generating"] = False
            ids = kwargs["input_ids"]
            seqs = out if isinstance(out, torch.Tensor) else out.sequences
            full = torch.cat([ids, seqs[:, plan.input_ids.shape[1]:]], dim=1) if seqs.shape[0] == ids.shape[0] else seqs
            if isinstance(out, torch.Tensor):
                return full
            out.sequences = full
            return out

        return generate

    def make_pack(original: Callable) -> Callable:
        def pack_image_features(image_features: Any, image_sizes: Any, *args: Any, **kwargs: Any) -> Any:
            handle.state["budget_pack_call"] = (image_sizes, args, kwargs)  # replayed on view maps
            return original(image_features, image_sizes, *args, **kwargs)

        return pack_image_features

    if host.pack:
        handle.add_undo(patch_method(inner, "pack_image_features", make_pack))
    handle.add_undo(patch_method(inner, "get_image_features", make_seam))
    handle.add_undo(patch_method(model, "forward", make_forward))
    if callable(getattr(model, "generate", None)):
        handle.add_undo(patch_method(model, "generate", make_generate))
