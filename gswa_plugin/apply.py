"""Application modes: where a tile's weight acts on the language model. No host code.

A per-tile scalar on the image embeddings (the ``embed`` mode, the paper's) is largely undone
by normalisation: a pre-norm language model normalises every token before its first attention,
so the first layer's queries, keys and values of an image token do not depend on the scalar.
The two other modes act inside the language model's self-attention, where no norm follows:

``value``
    the value vectors of tile ``i``'s tokens are multiplied by ``w_i`` (a forward hook on each
    attention's value projection), so every later token reads tile ``i`` scaled by ``w_i``. It
    acts outside the attention kernel, so it works with eager, SDPA and FlashAttention alike.
``attn_bias``
    ``log(w_i)`` is added to the attention logits of every key of tile ``i`` (a pre-hook that
    adds it to the additive attention mask), so attention mass moves towards heavy tiles. It
    needs a kernel that takes an additive mask: ``eager`` or ``sdpa``.

Both are the identity when every weight is 1, and both keep working with a KV cache: the
weights of every position seen so far are kept, so during ``generate()`` the cached (already
scaled) values stay scaled, the cached keys keep their bias, and generated tokens have weight 1.

The host's adapter says where the language model is
(:meth:`~gswa_plugin.adapters.Adapter.language_model`) and which positions hold which view's
tokens (:meth:`~gswa_plugin.adapters.Adapter.position_weights`); the rest lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from gswa_plugin.config import MODES  # noqa: F401  (re-exported: the modes live here)
from gswa_plugin.errors import LayoutError, UnsupportedModeError

if TYPE_CHECKING:  # pragma: no cover
    from gswa_plugin.handle import GSWAHandle

#: Attention implementations that accept an additive float mask (needed by ``attn_bias``).
BIAS_KERNELS: tuple[str, ...] = ("eager", "sdpa")

_STATE_KEY = "mode_state"


@dataclass
class ModeState:
    """Per-model state of a non-embed mode, kept across the calls of one sequence.

    Attributes:
        seen: ``[batch, positions]`` weight of every position of the current sequence seen so
            far (prefill plus generated tokens); ``None`` while no image position was seen, in
            which case the hooks change nothing.
        current: ``[batch, q_len]`` weights of the positions of the language-model call in
            progress (a slice of ``seen``), ``None`` when they are all text.
    """

    seen: torch.Tensor | None = None
    current: torch.Tensor | None = None


def apply_weights(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The ``embed`` mode: scale each view's features ``[views, ...]`` by its weight ``[views]``
    (in the features' dtype)."""
    shape = (-1,) + (1,) * (features.dim() - 1)
    return features * weights.to(features.dtype).view(shape)


def placeholder_position_weights(
    input_ids: torch.Tensor, token_id: int, view_weights: torch.Tensor, tokens_per_view: int
) -> torch.Tensor:
    """Per-position weights for hosts that put one placeholder token per visual token.

    The placeholders are filled in order with the flat views' tokens (``tokens_per_view`` each),
    so the ``k``-th placeholder belongs to view ``k // tokens_per_view``. Text positions get 1.

    Args:
        input_ids: ``[batch, seq]`` token ids of the call.
        token_id: id of the image placeholder token.
        view_weights: ``[views]`` weight of every view (thumbnail included); gradients flow.
        tokens_per_view: tokens each view contributes.

    Returns:
        ``[batch, seq]`` float weights (differentiable with respect to ``view_weights``).

    Raises:
        LayoutError: the placeholders do not match ``views * tokens_per_view``.
    """
    mask = input_ids == token_id
    n_placeholders = int(mask.sum())
    expected = view_weights.shape[0] * tokens_per_view
    if n_placeholders != expected:
        raise LayoutError(
            f"the input holds {n_placeholders} image placeholder tokens but GSWA weighted "
            f"{view_weights.shape[0]} views of {tokens_per_view} tokens ({expected}); the image features "
            "of this call must come from the same forward as its input_ids"
        )
    per_token = view_weights.float().repeat_interleave(tokens_per_view)
    ones = torch.ones(mask.shape, dtype=per_token.dtype, device=per_token.device)
    return ones.masked_scatter(mask.to(per_token.device), per_token)


def attention_modules(language_model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every decoder layer (``layers[i].self_attn``), in order.

    Raises:
        UnsupportedModeError: the language model has no ``layers[i].self_attn`` with a
            ``v_proj``; its adapter must point at the decoder stack.
    """
    layers = getattr(language_model, "layers", None)
    if layers is None:
        inner = getattr(language_model, "model", None)
        layers = getattr(inner, "layers", None)
    attns = [getattr(layer, "self_attn", None) for layer in (layers or [])]
    if not attns or any(a is None or not isinstance(getattr(a, "v_proj", None), nn.Module) for a in attns):
        raise UnsupportedModeError(
            f"cannot find the decoder layers' self-attention in {type(language_model).__name__}: the `value` and "
            "`attn_bias` modes need `layers[i].self_attn.v_proj` (the layout of Llama/Qwen2/Mistral-style "
            "transformers models); use `mode: embed` for this model"
        )
    return attns


def _past_length(kwargs: dict[str, Any]) -> int:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


def _seq_len(args: tuple, kwargs: dict[str, Any]) -> int | None:
    for key in ("inputs_embeds", "input_ids"):
        t = kwargs.get(key)
        if isinstance(t, torch.Tensor):
            return int(t.shape[1])
    if args and isinstance(args[0], torch.Tensor):
        return int(args[0].shape[1])
    return None


def _check_kernel(module: nn.Module) -> None:
    impl = getattr(getattr(module, "config", None), "_attn_implementation", None) or "eager"
    if impl not in BIAS_KERNELS:
        raise UnsupportedModeError(
            f"`mode: attn_bias` adds log(w) to the attention logits, which the '{impl}' attention kernel cannot "
            f"take (it accepts no additive bias); load the model with attn_implementation='sdpa' or 'eager', "
            "or use `mode: value`, which scales the tiles' value vectors and works with every kernel"
        )


def _with_bias(mask: torch.Tensor | None, log_w: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
    """An additive float mask ``[batch, 1, q, k]`` equal to ``mask`` plus ``log_w`` on the keys."""
    k_len = log_w.shape[-1]
    neg = torch.finfo(dtype).min
    if mask is None:  # SDPA's implicit causal mask (no padding): queries are the last q_len positions
        q_pos = torch.arange(k_len - q_len, k_len, device=log_w.device)[:, None]
        allowed = torch.arange(k_len, device=log_w.device)[None, :] <= q_pos
        mask = torch.zeros(allowed.shape, dtype=dtype, device=log_w.device).masked_fill(~allowed, neg)[None, None]
    elif mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, neg)
    if mask.shape[-1] > k_len:  # a static cache longer than the sequence: unseen keys weigh 1
        log_w = torch.nn.functional.pad(log_w, (0, mask.shape[-1] - k_len))
    return mask + log_w[:, None, None, : mask.shape[-1]].to(mask.dtype)


def install(model: nn.Module, handle: GSWAHandle) -> None:
    """Install the hooks of ``handle.config.mode`` on ``model`` (nothing for ``embed``).

    Raises:
        UnsupportedModeError: the adapter cannot locate the language model or its image
            positions, or (``attn_bias``) the attention kernel takes no bias.
    """
    mode = handle.config.mode
    if mode == "embed":
        return
    adapter = handle.adapter
    language_model = adapter.language_model(model)
    if language_model is None:
        raise UnsupportedModeError(
            f"`mode: {mode}` needs to hook the language model's attention, and the '{adapter.name}' adapter does not "
            "say where it is (it implements no `language_model()`/`position_weights()`); use `mode: embed` with "
            "this host, or extend its adapter"
        )
    attns = attention_modules(language_model)
    k = handle.config.mode_layers
    attns = attns if k is None else attns[:k]
    if mode == "attn_bias":
        _check_kernel(attns[0])
    state = ModeState()
    handle.state[_STATE_KEY] = state
    handle.add_undo(lambda: handle.state.pop(_STATE_KEY, None))

    def lm_pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        q_len = _seq_len(args, kwargs)
        past = _past_length(kwargs)
        new = adapter.position_weights(model, handle, q_len) if q_len is not None else None
        if past == 0:
            state.seen = new
        elif state.seen is not None or new is not None:
            old = state.seen
            if old is None or old.shape[1] < past:
                # positions seen before without weights (or a cache we did not follow) weigh 1
                have = 0 if old is None else old.shape[1]
                ref = new if new is not None else old
                pad = torch.ones(ref.shape[0], past - have, dtype=ref.dtype, device=ref.device)
                old = pad if old is None else torch.cat([old, pad], dim=1)
            old = old[:, :past]
            if new is None:
                new = torch.ones(old.shape[0], q_len or 0, dtype=old.dtype, device=old.device)
            state.seen = torch.cat([old, new], dim=1)
        state.current = None if state.seen is None or q_len is None else state.seen[:, -q_len:]

    def lm_post_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        state.current = None  # the values of a finished call must not leak into a later one

    hooks = [
        language_model.register_forward_pre_hook(lm_pre_hook, with_kwargs=True),
        language_model.register_forward_hook(lm_post_hook, with_kwargs=True),
    ]
    if mode == "value":
        hooks += [a.v_proj.register_forward_hook(_value_hook(state)) for a in attns]
    else:
        hooks += [a.register_forward_pre_hook(_bias_hook(state), with_kwargs=True) for a in attns]
    for h in hooks:
        handle.add_undo(h.remove)


def _value_hook(state: ModeState) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        w = state.current
        if w is None:
            return None
        if w.shape != output.shape[:2]:
            raise LayoutError(
                f"GSWA's position weights cover {tuple(w.shape)} (batch, positions) but the value projection "
                f"received {tuple(output.shape[:2])}; the language model was called outside the host's forward"
            )
        return output * w[..., None].to(output.dtype)

    return hook


def _bias_hook(state: ModeState) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        if state.seen is None or state.current is None:
            return None
        _check_kernel(module)
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        q_len = hidden.shape[1]
        log_w = torch.log(state.seen.clamp_min(torch.finfo(torch.float32).tiny))
        kwargs["attention_mask"] = _with_bias(kwargs.get("attention_mask"), log_w, q_len, hidden.dtype)
        return args, kwargs

    return hook


def current_position_weights(handle: GSWAHandle) -> torch.Tensor | None:
    """The per-position weights of the sequence in progress (``[batch, positions]``), for tests
    and diagnostics; ``None`` in the ``embed`` mode or before any image position was seen."""
    state = handle.state.get(_STATE_KEY)
    return None if state is None else state.seen
