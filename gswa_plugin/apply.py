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
    ``log(w_i)`` is added to the attention logits of every key of tile ``i``, so attention mass
    moves towards heavy tiles. With a transformers attention function (``sdpa``,
    ``flash_attention_2``/``_3``) the bias rides on extra head dimensions: queries get 1, keys
    get ``log(w) / scale`` (in half precision split into a high and a low part so that bf16 keys
    carry it to about float32 precision; one dimension in float32), and queries, keys and values
    are zero-padded to a head size the kernel runs fast (GPU: a multiple of 8, 64 -> 72; CPU:
    a multiple of 16 in half precision, 64 -> 80; 65 in float32); the kernel runs with the host's
    own mask, so the implicit causal mask, GQA and memory linear in the sequence length are kept.
    A one-query call (a decode step) under ``sdpa`` gets the bias as a one-row mask
    ``[batch, 1, 1, keys]`` instead, with the host's queries, keys and values (no copy of the
    cache; transformers keeps GQA by folding the query heads); so does a causal prefill on a CPU
    without a host mask and without autograd, through PyTorch's fused CPU kernel, which takes the
    one-row mask together with ``is_causal``. The ``eager`` kernel (and attention modules that do
    not call transformers' attention interface) gets the bias in a dense additive mask. A
    sliding-window layer's cache holds the last positions only: its keys get the bias of those.

Both are the identity when every weight is 1, and both keep working with a KV cache: the
weights of every position seen so far are kept, so during ``generate()`` the cached (already
scaled) values stay scaled, the cached keys keep their bias, and generated tokens have weight 1.

The weights of a call are per call, not per model: they live in the calling thread's state
while the language model runs, and each decoder layer finds them again when gradient
checkpointing recomputes it during the backward pass (after the call has ended, possibly on
another thread); the per-layer hooks that record them are installed at the first call with
autograd enabled, so inference runs the decoder layers without GSWA hooks. While training, the layers use a detached copy of the weights, and a bridge
node on the language model's input embeddings hands the copy's gradient back to GSWA once
every layer's backward has run, so gradients reach GSWA with and without checkpointing, of
either kind (reentrant checkpointing computes gradients only for a layer's explicit inputs).
Beam search and ``num_return_sequences`` repeat each row of ``input_ids`` and its images; the
weights of each row are repeated the same way ([`fill_image_positions`][gswa_plugin.apply.fill_image_positions]).

The host's adapter says where the language model is
([`language_model`][gswa_plugin.adapters._base.Adapter.language_model]) and which positions hold which view's
tokens ([`position_weights`][gswa_plugin.adapters._base.Adapter.position_weights]); the rest lives here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from gswa_plugin._host import host_array
from gswa_plugin.config import MODES  # noqa: F401  (re-exported: the modes live here)
from gswa_plugin.errors import LayoutError, UnsupportedModeError
from gswa_plugin.layout import _image_slots, image_slots  # noqa: F401  (image_slots: public here too)

if TYPE_CHECKING:  # pragma: no cover
    from gswa_plugin.handle import GSWAHandle

#: Attention implementations that accept an additive float mask (``attn_bias``'s dense path).
BIAS_KERNELS: tuple[str, ...] = ("eager", "sdpa")
#: Attention implementations ``attn_bias`` wraps with its extra-dimension fast path.
FAST_BIAS_KERNELS: tuple[str, ...] = ("sdpa", "flash_attention_2", "flash_attention_3")
#: Prefix of the attention implementations ``attn_bias`` registers (``gswa_sdpa``, ...).
FAST_PREFIX = "gswa_"
#: Keyword argument that carries ``log(w)`` of the keys from the attention pre-hook to the kernel.
_BIAS_KWARG = "gswa_log_w"

_STATE_KEY = "mode_state"
#: ``handle.state`` key of the weights tensor last read as all exactly 1 (see ``unit_weights``).
UNIT_KEY = "unit_weights"
#: Language-model calls whose weights are kept for recomputation under gradient checkpointing.
RECOMPUTE_CALLS = 64


@dataclass
class CallWeights:
    """The weights one language-model call's layers use.

    Attributes:
        seen: ``[batch, positions]`` weight of every position up to this call's last (cached
            positions included): the keys' weights for ``attn_bias``.
        current: ``[batch, q_len]`` weights of this call's positions: the values' for ``value``;
            ``None`` where they are all 1 (a call without image positions, such as a decode step).
        unit: every weight in ``seen`` is exactly 1 and nothing is differentiated: ``attn_bias``
            leaves the attention to the host's kernel (bit-identical logits at identity).
    """

    seen: torch.Tensor
    current: torch.Tensor | None
    unit: bool = False
    bias: _KeyBias | None = None


@dataclass
class ModeState:
    """Per-thread state of a non-embed mode, kept across the calls of one sequence.

    Attributes:
        seen: ``[batch, positions]`` weight of every position of the current sequence seen so
            far (prefill plus generated tokens); ``None`` while no image position was seen.
        unit: every weight in ``seen`` is known to be exactly 1 (see
            [`unit_weights`][gswa_plugin.apply.unit_weights]).
        in_call: whether a language-model call is running on this thread.
        call: the weights of that call (``None``: no image position, nothing to change).
        layer: the weights of the decoder layer running on this thread (set by each layer's
            pre-hook, from ``call`` or, when checkpointing recomputes it, from the registry).
    """

    seen: torch.Tensor | None = None
    unit: bool = True
    in_call: bool = False
    call: CallWeights | None = None
    layer: CallWeights | None = None
    call_id: int | None = None

    @property
    def current(self) -> torch.Tensor | None:  # kept for diagnostics written against 0.1
        return None if self.call is None else self.call.current


class _Recompute:
    """The weights each decoder-layer call used, keyed by its input hidden states' storage, so
    that gradient checkpointing's recomputation (which reruns the layer on the same input, after
    the language-model call has ended) applies the same weights. Keeps the latest
    ``RECOMPUTE_CALLS`` training calls; entries hold detached leaves only, no graph."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: OrderedDict[int, dict[tuple, CallWeights | None]] = OrderedDict()
        self._serial = 0

    def new_call(self) -> int:
        with self._lock:
            self._serial += 1
            self._calls[self._serial] = {}
            while len(self._calls) > RECOMPUTE_CALLS:
                self._calls.popitem(last=False)
            return self._serial

    def put(self, call_id: int, key: tuple, weights: CallWeights | None) -> None:
        with self._lock:
            for other in self._calls.values():  # a storage seen again belongs to the newest call
                other.pop(key, None)
            entries = self._calls.get(call_id)
            if entries is not None:
                entries[key] = weights

    def get(self, key: tuple) -> CallWeights | None | bool:
        """The weights recorded for ``key`` (``None``: a call without image positions), or
        ``False`` where no call recorded it."""
        with self._lock:
            for entries in reversed(self._calls.values()):
                if key in entries:
                    return entries[key]
        return False


def _storage_key(t: Any) -> tuple | None:
    if not isinstance(t, torch.Tensor):
        return None
    return (t.device, t.dtype, tuple(t.shape), t.data_ptr())


class _Bridge(torch.autograd.Function):
    """Identity on the input embeddings whose backward hands GSWA the gradient its weights got
    in the layers (through the detached leaves), once every layer's backward has run."""

    @staticmethod
    def forward(ctx: Any, embeds: torch.Tensor, seen: torch.Tensor, leaves: tuple) -> torch.Tensor:  # type: ignore[override]
        ctx.leaves = leaves
        ctx.seen_shape = seen.shape
        return embeds.view_as(embeds)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        total = None
        seen_leaf, current_leaf = ctx.leaves
        for leaf, tail in ((seen_leaf, False), (current_leaf, True)):
            g = leaf.grad
            if g is None:
                continue
            leaf.grad = None
            if tail:
                g = torch.nn.functional.pad(g, (ctx.seen_shape[1] - g.shape[1], 0))
            total = g if total is None else total + g
        return grad, total, None


def apply_weights(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The ``embed`` mode: scale each view's features ``[views, ...]`` by its weight ``[views]``
    (in the features' dtype)."""
    shape = (-1,) + (1,) * (features.dim() - 1)
    return features * weights.to(features.dtype).view(shape)


def gather_weights(weights: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``[batch, seq]`` per-position weights from an [`image_slots`][gswa_plugin.layout.image_slots]
    index: 1 at text, ``weights[v]`` at item ``v``'s positions (differentiable, no sync)."""
    return torch.cat([weights.new_ones(1), weights])[slots]


def placeholder_weights(handle: Any, ids: torch.Tensor, token: int, no_features: str) -> torch.Tensor | None:
    """``[batch, seq]`` per-position weights of a call whose placeholder tokens (``token`` in
    ``ids``) hold the views GSWA weighted in this forward (``handle.last_batch``): 1 at text, the
    view's weight at its tokens (rows repeated by beam search included). Reuses the index the
    seam's host step prepared for exactly these ``ids``
    ([`cached_slots`][gswa_plugin.handle.GSWAHandle.cached_slots]).

    Returns:
        The weights, or ``None`` when the call holds no placeholder token.

    Raises:
        LayoutError: ``no_features`` when the call holds placeholders but GSWA weighted nothing.
    """
    batch = handle.last_batch
    weights = None if batch is None else batch.weights
    found, slots = handle.cached_slots(ids)
    if not found or weights is None:
        slots = image_slots(
            ids, token, None if weights is None else weights.shape[0], ids.device,
            1 if batch is None else batch.features.shape[1], handle=handle,
        )
    if slots is None:
        return None
    if weights is None:
        raise LayoutError(no_features)
    return gather_weights(weights.float(), slots)


def fill_image_positions(input_ids: Any, mask: Any, per_token: torch.Tensor, what: str) -> torch.Tensor:
    """Per-position weights ``[batch, seq]``: the image positions (``mask``) get ``per_token``
    in order, text gets 1.

    ``generate(num_beams=k)`` and ``num_return_sequences=k`` encode the images once and repeat
    every row of ``input_ids`` (and its images) ``k`` times in a row; when the positions are
    ``k`` times the weighted tokens and the rows come in ``k`` identical copies, each row's
    weights are repeated the same way.

    ``input_ids`` and ``mask`` may be tensors or host (numpy) arrays: the positions are worked
    out on the host (see [`image_slots`][gswa_plugin.layout.image_slots]), and the weights are
    gathered on ``per_token``'s device.

    Raises:
        LayoutError: the image positions match neither the weighted tokens nor a repeat of them.
    """
    slots = image_slots(input_ids, None, int(per_token.shape[0]), per_token.device, mask=mask, what=what)
    if slots is None:  # no image position: right only when nothing was weighted either
        m = host_array(mask).astype(bool)
        _image_slots(host_array(input_ids), m, int(per_token.shape[0]), what)
        return torch.ones(m.shape, dtype=per_token.dtype, device=per_token.device)
    return gather_weights(per_token, slots)


def placeholder_position_weights(
    input_ids: Any, token_id: int, view_weights: torch.Tensor, tokens_per_view: int
) -> torch.Tensor:
    """Per-position weights for hosts that put one placeholder token per visual token.

    The placeholders are filled in order with the flat views' tokens (``tokens_per_view`` each),
    so the ``k``-th placeholder belongs to view ``k // tokens_per_view``. Text positions get 1.
    Rows repeated by beam search are followed (see [`fill_image_positions`][gswa_plugin.apply.fill_image_positions]).

    Args:
        input_ids: ``[batch, seq]`` token ids of the call (a tensor or a host array).
        token_id: id of the image placeholder token.
        view_weights: ``[views]`` weight of every view (thumbnail included); gradients flow.
        tokens_per_view: tokens each view contributes.

    Returns:
        ``[batch, seq]`` float weights (differentiable with respect to ``view_weights``).

    Raises:
        LayoutError: the placeholders do not match ``views * tokens_per_view``.
    """
    w = view_weights.float()
    what = f"{view_weights.shape[0]} views of {tokens_per_view} tokens"
    slots = image_slots(input_ids, token_id, w.shape[0], w.device, tokens_per_view, what=what)
    if slots is None:  # no placeholder: right only when no view was weighted either
        ids = host_array(input_ids)
        _image_slots(ids, ids == token_id, w.shape[0] * tokens_per_view, what)
        return torch.ones(ids.shape, dtype=w.dtype, device=w.device)
    return gather_weights(w, slots)


def decoder_layers(language_model: nn.Module) -> list[nn.Module]:
    """The decoder layers (``layers[i]``, each with a ``self_attn`` holding a ``v_proj``), in order.

    Raises:
        UnsupportedModeError: the language model has no ``layers[i].self_attn`` with a
            ``v_proj``; its adapter must point at the decoder stack.
    """
    layers = getattr(language_model, "layers", None)
    if layers is None:
        inner = getattr(language_model, "model", None)
        layers = getattr(inner, "layers", None)
    layers = list(layers or [])
    attns = [getattr(layer, "self_attn", None) for layer in layers]
    if not attns or any(a is None or not isinstance(getattr(a, "v_proj", None), nn.Module) for a in attns):
        raise UnsupportedModeError(
            f"cannot find the decoder layers' self-attention in {type(language_model).__name__}: the `value` and "
            "`attn_bias` modes need `layers[i].self_attn.v_proj` (the layout of Llama/Qwen2/Mistral-style "
            "transformers models); use `mode: embed` for this model"
        )
    return layers


def attention_modules(language_model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every decoder layer (``layers[i].self_attn``), in order.

    Raises:
        UnsupportedModeError: as [`decoder_layers`][gswa_plugin.apply.decoder_layers].
    """
    return [layer.self_attn for layer in decoder_layers(language_model)]


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


def _batch(args: tuple, kwargs: dict[str, Any]) -> int | None:
    for key in ("inputs_embeds", "input_ids"):
        t = kwargs.get(key)
        if isinstance(t, torch.Tensor):
            return int(t.shape[0])
    if args and isinstance(args[0], torch.Tensor):
        return int(args[0].shape[0])
    return None


def _check_kernel(module: nn.Module) -> None:
    impl = getattr(getattr(module, "config", None), "_attn_implementation", None) or "eager"
    if impl not in BIAS_KERNELS:
        raise UnsupportedModeError(
            f"`mode: attn_bias` adds log(w) to the attention logits, which the '{impl}' attention kernel cannot "
            f"take (it accepts no additive bias); load the model with attn_implementation='sdpa', "
            "'flash_attention_2' or 'eager', "
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
    return mask + _keys_log_w(log_w, mask.shape[-1])[:, None, None, :].to(mask.dtype)


def _keys_log_w(log_w: torch.Tensor, k_len: int) -> torch.Tensor:
    """``log(w)`` ``[batch, k_len]`` of the keys an attention call receives, from ``log_w`` of every
    position seen so far ``[batch, positions]``. More keys than positions: a static cache longer
    than the sequence, whose unseen slots weigh 1 (0 here). Fewer keys: a sliding-window layer's
    cache, which holds the *last* positions (transformers' dynamic and static sliding caches both
    return the most recent ``k_len`` positions in order)."""
    n = log_w.shape[-1]
    if k_len > n:
        return torch.nn.functional.pad(log_w, (0, k_len - n))
    return log_w if k_len == n else log_w[:, n - k_len :]


class _KeyBias:
    """``log(w)`` of the keys ``[batch, keys]`` of one language-model call, handed to the attention
    function; without autograd, the extra dimensions built from it are kept for the call's other
    layers (``cache``; ``None`` while differentiating, so that every layer builds its own graph)."""

    def __init__(self, seen: torch.Tensor) -> None:
        self.log_w = torch.log(seen.clamp_min(torch.finfo(torch.float32).tiny))
        self.cache: dict[tuple, tuple[Any, torch.Tensor]] | None = None if torch.is_grad_enabled() else {}


def _bias_parts(dtype: torch.dtype) -> int:
    """Extra dimensions that carry ``log_w / scale``: one in float32/float64 (it holds the value to the
    precision of the logits), two in half precision (a high and a low part, about float32 precision)."""
    return 1 if dtype in (torch.float32, torch.float64) else 2


def _bias_head_dim(d: int, dtype: torch.dtype, device: torch.device | str) -> int:
    """Head size of the extra-dimension path, the cheapest that keeps the kernel's fast path.

    On a GPU a multiple of 8 (FlashAttention and CUDA SDPA's fused kernels need one; ``64 -> 72``).
    On a CPU, SDPA's fused kernel takes any head size, but in bfloat16/float16 it runs fastest at
    multiples of 16 (``64 -> 80``: about 1.10x the host's kernel against 1.26x at 72 and 1.38x at
    66, docs/benchmark.md), and in float32 the one extra dimension is enough (``64 -> 65``).
    """
    need = d + _bias_parts(dtype)
    if torch.device(device).type != "cpu":
        return (need + 7) // 8 * 8
    return need if dtype in (torch.float32, torch.float64) else (need + 15) // 16 * 16


def biased_attention(
    inner: Callable, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, log_w: torch.Tensor, scaling: float | None = None,
    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Run the attention function ``inner`` with ``log_w`` ``[batch, keys]`` added to the logits of
    every query against each key, without an additive mask: extra head dimensions carry it (two in
    half precision, one in float32; head size from ``_bias_head_dim``).

    ``query`` ``[b, heads, q, d]``, ``key``/``value`` ``[b, kv_heads, k, d]`` (transformers'
    attention-interface layout). The logits ``q.k * scaling`` are unchanged (``scaling`` is passed
    explicitly, so the wider head does not change it), and ``1 * log_w / scaling`` (in half
    precision a high plus a low part in the keys' dtype) times ``scaling`` adds ``log_w``. Keys
    beyond ``log_w`` (a static cache longer than the sequence) get no bias; fewer keys than
    ``log_w`` (a sliding-window layer's cache) are the last positions. ``cache`` (a dict) keeps the
    extra dimensions for further calls with the same shapes (the other layers of one
    language-model call).
    """
    d = query.shape[-1]
    scale = float(scaling) if scaling is not None else d**-0.5
    extra = _bias_head_dim(d, key.dtype, key.device) - d
    parts = _bias_parts(key.dtype)
    k_len = key.shape[-2]
    cache_key = (tuple(query.shape), tuple(key.shape), key.dtype, key.device, scale)
    found = None if cache is None else cache.get(cache_key)
    if found is None:
        lw = _keys_log_w(log_w.float(), k_len) / scale
        hi = lw.to(key.dtype)
        split = [hi, (lw - hi.float()).to(key.dtype)] if parts == 2 else [hi]
        k_extra = torch.nn.functional.pad(torch.stack(split, dim=-1), (0, extra - parts))  # [b, k, extra]
        k_extra = k_extra[:, None].expand(key.shape[0], key.shape[1], k_len, extra)
        q_extra = torch.nn.functional.pad(query.new_ones(parts), (0, extra - parts)).expand(*query.shape[:-1], extra)
        found = (q_extra, k_extra)
        if cache is not None:
            cache[cache_key] = found
    q_extra, k_extra = found
    out, attn = inner(
        module,
        torch.cat([query, q_extra], dim=-1),
        torch.cat([key, k_extra], dim=-1),
        torch.nn.functional.pad(value, (0, extra)),
        attention_mask,
        scaling=scale,
        **kwargs,
    )
    return out[..., :d], attn


def _one_query_mask(
    bias: _KeyBias, attention_mask: torch.Tensor | None, k_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """The additive mask ``[batch, 1, 1, keys]`` of a one-query call (a decode step): the host's mask
    plus ``log(w)`` of the keys. It is linear in the number of keys and shared by every head, so
    SDPA keeps grouped-query attention (transformers folds the query heads onto the key/value heads
    for one query) and copies no key or value. Built once per language-model call and host mask
    without autograd (``bias.cache``). The bias is rounded to ``dtype``, as in the dense path."""
    cache = bias.cache
    ident = ("one_query", k_len, dtype, None if attention_mask is None else id(attention_mask))
    if cache is not None:
        hit = cache.get(ident)
        if hit is not None and hit[0] is attention_mask:
            return hit[1]
    mask = _with_bias(attention_mask, _keys_log_w(bias.log_w, k_len), 1, dtype)
    if cache is not None:
        cache[ident] = (attention_mask, mask)
    return mask


def _cpu_flash_with_mask() -> Callable | None:
    """PyTorch's fused CPU attention (``aten._scaled_dot_product_flash_attention_for_cpu``) where it
    takes ``attn_mask`` and ``is_causal`` together (``scaled_dot_product_attention`` refuses both)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    try:
        return op if op is not None and "attn_mask" in str(op.default._schema) else None
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch without the overload
        return None


_CPU_FLASH = _cpu_flash_with_mask()


def _causal_row_bias_applies(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, bias: _KeyBias, kwargs: dict[str, Any],
) -> bool:
    """Whether a call can take ``log(w)`` as a one-row mask ``[batch, 1, 1, keys]`` on the causal
    fast path: on a CPU, where transformers' SDPA function would run causally without a mask (no
    padding; ``is_causal``; more than one query), no dropout, nothing to differentiate (the fused
    kernel has no gradient for the mask) and none of the arguments ``sdpa`` treats specially."""
    if _CPU_FLASH is None or query.device.type != "cpu" or attention_mask is not None or query.shape[-2] < 2:
        return False
    is_causal = kwargs.get("is_causal")
    if not (getattr(module, "is_causal", True) if is_causal is None else is_causal) or kwargs.get("dropout", 0.0):
        return False
    if any(kwargs.get(k) is not None for k in ("position_bias", "softcap")) or kwargs.get("output_attentions"):
        return False
    if key.shape[-2] < query.shape[-2] or query.shape[1] % key.shape[1]:
        return False
    tensors = (query, key, value, bias.log_w)
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _causal_row_bias(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: _KeyBias, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, None]:
    """Causal attention with ``log(w)`` of the keys as a ``[batch, 1, 1, keys]`` float32 mask, through
    the fused CPU kernel: the host's head size and layout, grouped-query attention kept (the kernel
    takes fewer key/value heads), memory linear in the sequence length. Same output layout as
    transformers' ``sdpa`` function. Keys beyond the queries (an empty static cache's slots) are
    dropped first, as transformers does before a causal call."""
    q_len = query.shape[-2]
    if key.shape[-2] > q_len:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    cache, ident = bias.cache, ("causal_row", q_len)
    mask = None if cache is None else cache.get(ident)
    if mask is None:
        mask = _keys_log_w(bias.log_w.float(), q_len)[:, None, None, :]
        if cache is not None:
            cache[ident] = mask
    if query.dtype == torch.float64:
        mask = mask.double()
    out, _ = _CPU_FLASH(query, key, value, 0.0, True, attn_mask=mask, scale=kwargs.get("scaling"))
    return out.transpose(1, 2).contiguous(), None


def _fast_attention(base: str) -> Callable:
    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        inner = ALL_ATTENTION_FUNCTIONS[base]
        bias = kwargs.pop(_BIAS_KWARG, None)
        if bias is None:  # no image position in this call (or weights exactly 1): the host's kernel
            return inner(module, query, key, value, attention_mask, *args, **kwargs)
        if len(args) > 2:
            raise UnsupportedModeError(
                f"{type(module).__name__} calls its attention function with {len(args)} positional arguments after "
                "the mask; `mode: attn_bias` knows `dropout` and `scaling` there. Load the model with "
                "attn_implementation='eager' (a dense mask carries the bias), or use `mode: value`"
            )
        kwargs.update(zip(("dropout", "scaling"), args))  # transformers' order after the mask
        if base == "sdpa" and query.shape[-2] == 1:  # one query (a decode step): a one-row bias as the mask
            mask = _one_query_mask(bias, attention_mask, key.shape[-2], query.dtype)
            return inner(module, query, key, value, mask, **kwargs)
        if base == "sdpa" and _causal_row_bias_applies(module, query, key, value, attention_mask, bias, kwargs):
            return _causal_row_bias(query, key, value, bias, kwargs)
        return biased_attention(
            inner, module, query, key, value, attention_mask, bias.log_w, cache=bias.cache, **kwargs
        )

    attention.__name__ = attention.__qualname__ = f"{FAST_PREFIX}{base}_attention"
    return attention


def _fast_kernel(language_model: nn.Module, attn: nn.Module) -> str | None:
    """The attention implementation ``attn_bias`` can wrap for ``attn`` (``None``: dense path)."""
    import inspect
    import sys

    config = getattr(attn, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl not in FAST_BIAS_KERNELS:
        return None
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    except ImportError:  # pragma: no cover - transformers without the interfaces
        return None
    # the attention module must look its kernel up in transformers' interface and pass on its
    # keyword arguments (Llama/Qwen2/Mistral-style modules do; remote code often does not)
    owner = sys.modules.get(type(attn).__module__)
    if getattr(owner, "ALL_ATTENTION_FUNCTIONS", None) is None or impl not in ALL_ATTENTION_FUNCTIONS:
        return None
    params = inspect.signature(type(attn).forward).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    name = FAST_PREFIX + impl
    if name not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(name, _fast_attention(impl))
    masks = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    if name not in masks and impl in masks:  # the host kernel's own mask
        AttentionMaskInterface.register(name, masks[impl])
    return name


def unit_weights(handle: Any) -> bool:
    """Whether the weights of the latest forward (``handle.last_batch``) are all exactly 1, as
    the finite-weights check read them (one value read for both; see
    [`check_processed`][gswa_plugin.plugins.check_processed]). ``False`` when unknown."""
    batch = handle.last_batch
    unit = handle.state.get(UNIT_KEY)
    return batch is not None and unit is not None and unit is batch.weights


def _state(handle: GSWAHandle) -> ModeState:
    state = handle.state.get(_STATE_KEY)
    if state is None:
        state = handle.state[_STATE_KEY] = ModeState()
    return state


def _embeds_key(args: tuple, kwargs: dict[str, Any]) -> str | None:
    if isinstance(kwargs.get("inputs_embeds"), torch.Tensor):
        return "inputs_embeds"
    return None


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
    layers = decoder_layers(language_model)
    k = handle.config.mode_layers
    layers = layers if k is None else layers[:k]
    attns = [layer.self_attn for layer in layers]
    if mode == "attn_bias":
        fast = _fast_kernel(language_model, attns[0])
        if fast is None:
            _check_kernel(attns[0])
        else:  # the language model's attention runs through the wrapper; disable() restores the host's
            configs = {id(c): c for c in (getattr(a, "config", None) for a in attns) if c is not None}
            for cfg in configs.values():
                old = cfg._attn_implementation
                cfg._attn_implementation = fast
                handle.add_undo(lambda cfg=cfg, old=old: setattr(cfg, "_attn_implementation", old))
    recompute = _Recompute()
    handle.add_undo(lambda: handle.state.pop(_STATE_KEY, None))
    armed: list[Any] = []  # the decoder layers' recompute hooks, once installed
    arm_lock = threading.Lock()

    def arm_recompute() -> None:
        # Only a call that can be differentiated needs the per-layer hooks (they record the
        # weights for gradient checkpointing's recomputation); inference never installs them, so
        # its layers keep PyTorch's hook-free fast path. Installed before the first such call's
        # layers run, kept until disable() (a backward may come any time later).
        with arm_lock:
            if armed:
                return
            for layer in layers:
                armed.append(layer.register_forward_pre_hook(layer_pre_hook, with_kwargs=True))
                armed.append(layer.register_forward_hook(layer_post_hook))
                armed.extend(
                    child.register_forward_pre_hook(child_pre_hook, with_kwargs=True) for child in layer.children()
                )
            for h in armed:
                handle.add_undo(h.remove)

    def lm_pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        state = _state(handle)
        q_len = _seq_len(args, kwargs)
        past = _past_length(kwargs)
        new = adapter.position_weights(model, handle, q_len) if q_len is not None else None
        rows = _batch(args, kwargs)
        if new is not None and rows is not None and rows != new.shape[0] and rows % new.shape[0] == 0:
            # generate(num_beams=k) / num_return_sequences=k on the embeddings (InternVL's remote
            # code generates from inputs_embeds): each row is repeated k times in a row
            k = rows // new.shape[0]
            new = new[:, None].expand(-1, k, -1).reshape(rows, new.shape[1])
        text_only = new is None
        unit = text_only or unit_weights(handle)
        if past == 0:
            state.seen = new
            state.unit = unit
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
            state.unit = state.unit and unit
        state.in_call = True
        state.call = None
        state.layer = None
        # A call that can be differentiated records every layer's weights (None for a text-only
        # call too, so that a stale entry of a freed tensor is never found for its storage).
        state.call_id = None
        if torch.is_grad_enabled():
            arm_recompute()
            state.call_id = recompute.new_call()
        if state.seen is None or q_len is None:
            return None
        seen = state.seen
        if not (torch.is_grad_enabled() and seen.requires_grad):
            # a call without image positions (a text-only decode step) has weight 1 throughout:
            # `value` skips its multiply (`current` None); `attn_bias` still biases the cached keys
            state.call = CallWeights(seen=seen, current=None if text_only else seen[:, -q_len:], unit=state.unit)
            return None
        # Training: the layers use detached leaves (so a reentrant checkpoint's recomputation and
        # a non-reentrant one's both see plain tensors), and the bridge on the input embeddings
        # sends the leaves' gradients back into GSWA's graph after every layer's backward.
        seen_leaf = seen.detach().requires_grad_(True)
        current_leaf = seen[:, -q_len:].detach().requires_grad_(True)
        state.call = CallWeights(seen=seen_leaf, current=current_leaf)
        key = _embeds_key(args, kwargs)
        if key is None:
            raise UnsupportedModeError(
                f"`mode: {mode}` trains GSWA through the language model's `inputs_embeds`, and "
                f"{type(module).__name__} was called without them; call it as the host's forward does"
            )
        kwargs = dict(kwargs)
        kwargs[key] = _Bridge.apply(kwargs[key], seen, (seen_leaf, current_leaf))
        return args, kwargs

    def lm_post_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        state = _state(handle)  # the weights of a finished call must not leak into a later one
        state.in_call = False
        state.call = None
        state.layer = None
        state.call_id = None

    def layer_pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any] | None = None) -> None:
        # (``kwargs`` optional: a thread may call the layer while another is arming the hooks)
        kwargs = kwargs or {}
        state = _state(handle)
        key = _storage_key(args[0] if args else kwargs.get("hidden_states"))
        if state.in_call:  # the layer's forward, inside the language model's call
            state.layer = state.call
            if key is not None and state.call_id is not None:
                recompute.put(state.call_id, key, state.call)
        else:  # checkpointing recomputes the layer during backward (older transformers) or a direct call
            found = recompute.get(key) if key is not None else False
            state.layer = None if found is False else found

    def child_pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any] | None = None) -> None:
        # transformers >= 5 checkpoints the layer's `forward`, so the layer's own hooks do not run
        # when the backward pass recomputes it; its first child (the input norm) receives the
        # layer's input, whose storage finds the weights of the call that made it.
        state = _state(handle)
        if state.in_call:
            return
        key = _storage_key(args[0] if args else (kwargs or {}).get("hidden_states"))
        found = recompute.get(key) if key is not None else False
        if found is not False:
            state.layer = found

    def layer_post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        _state(handle).layer = None

    hooks = [
        language_model.register_forward_pre_hook(lm_pre_hook, with_kwargs=True),
        language_model.register_forward_hook(lm_post_hook, with_kwargs=True),
    ]
    if mode == "value":
        hooks += [a.v_proj.register_forward_hook(_value_hook(handle)) for a in attns]
    else:
        hooks += [a.register_forward_pre_hook(_bias_hook(handle), with_kwargs=True) for a in attns]
    for h in hooks:
        handle.add_undo(h.remove)


def _layer_weights(handle: GSWAHandle) -> CallWeights | None:
    """The weights of the decoder layer running on this thread: the language-model call's inside
    it (every layer of one call uses the same), the recorded ones while gradient checkpointing
    recomputes a layer after the call."""
    state = _state(handle)
    return state.call if state.in_call else state.layer


def _value_hook(handle: GSWAHandle) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        call = _layer_weights(handle)
        if call is None:
            return None
        w = call.current
        if w is None:  # text-only positions: weight 1, nothing to multiply
            return None
        if w.shape != output.shape[:2]:
            raise LayoutError(
                f"GSWA's position weights cover {tuple(w.shape)} (batch, positions) but the value projection "
                f"received {tuple(output.shape[:2])}; the language model was called outside the host's forward"
            )
        return output * w[..., None].to(output.dtype)

    return hook


def _bias_hook(handle: GSWAHandle) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        call = _layer_weights(handle)
        if call is None:
            return None
        if call.unit:  # every weight exactly 1: the host's attention, bit for bit
            return None
        bias = call.bias
        if bias is None or torch.is_grad_enabled():  # one per call without autograd, else one per layer
            bias = _KeyBias(call.seen)
            if not torch.is_grad_enabled():
                call.bias = bias
        log_w = bias.log_w
        impl = getattr(getattr(module, "config", None), "_attn_implementation", None)
        if isinstance(impl, str) and impl.startswith(FAST_PREFIX):
            kwargs[_BIAS_KWARG] = bias
            return args, kwargs
        _check_kernel(module)
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        q_len = hidden.shape[1]
        kwargs["attention_mask"] = _with_bias(kwargs.get("attention_mask"), log_w, q_len, hidden.dtype)
        return args, kwargs

    return hook


def current_position_weights(handle: GSWAHandle) -> torch.Tensor | None:
    """The per-position weights of the sequence in progress on this thread (``[batch,
    positions]``), for tests and diagnostics; ``None`` in the ``embed`` mode or before any image
    position was seen."""
    state = handle.state.get(_STATE_KEY)
    return None if state is None else state.seen
