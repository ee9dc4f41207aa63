"""The GSWA math, with no host code.

Data flows one way: a host adapter hands over a ``TileBatch`` (every view of every image
flattened, per-view summaries, and the [`TileLayout`][gswa_plugin.layout.TileLayout] saying how many views each image
has
and where its global thumbnail sits); [`GSWAModule`][gswa_plugin.weighting.GSWAModule] turns the summaries into per-tile
weights; [`gswa_plugin.apply.apply_weights`][gswa_plugin.apply.apply_weights] scales each view's features (the
``embed`` mode).

Definition (see the docs' "Concepts" page), per image with ``T >= 2`` tiles and a thumbnail:

1. summaries ``g`` (thumbnail) and ``s_1..s_T`` (tiles), padded into ``[images, 1 + T_max, D]``
   with the thumbnail in slot 0 and a mask over the missing tiles;
2. a *variant* maps them to attention logits from the thumbnail to each tile
   (``[images, T_max]`` or per head ``[images, heads, T_max]``);
3. ``w_i = mean_h(T * softmax_h(logits)_i)``, so the mean tile weight is 1 and all-zero logits
   give exactly 1 (computed as ``T * e_i / sum(e)`` so that the uniform case is bit-exact);
4. optional floor ``w <- w + m (1 - w)``; the thumbnail gets ``global_weight``; an image with a
   single view has no thumbnail and keeps weight 1.

Everything is batched over images with different tile counts by padding and masking; there is
no Python loop over tiles or images.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from gswa_plugin.errors import LayoutError
from gswa_plugin.layout import TileLayout, pad_summaries


def logits_to_weights(
    logits: torch.Tensor, tile_mask: torch.Tensor, temperature: float = 1.0, min_weight: float = 0.0
) -> torch.Tensor:
    """Attention logits ``[B, T]`` or ``[B, H, T]`` -> tile weights ``[B, T]`` with mean 1.

    Padding tiles get weight 0. All-zero logits give exactly 1 for every tile.
    """
    if logits.dim() == 2:
        logits = logits[:, None, :]
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    mask = tile_mask[:, None, :]
    logits = logits.masked_fill(~mask, float("-inf"))
    m = logits.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(logits.dtype).min)
    e = torch.exp(logits - m).masked_fill(~mask, 0.0)
    n_tiles = tile_mask.sum(-1, keepdim=True).to(e.dtype)[:, None, :]  # [B, 1, 1]
    # T * e / sum(e) (not T * (e / sum(e))): exactly 1 when all e are equal.
    w = (n_tiles * e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)).mean(dim=1)
    if min_weight:
        w = w + min_weight * (1.0 - w)
    return w.masked_fill(~tile_mask, 0.0)



# --- variants --------------------------------------------------------------------------------
class _Block(nn.Module):
    """Pre-norm transformer block; with ``global_only`` only the thumbnail token is updated."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, global_only: bool):
        super().__init__()
        self.global_only = global_only
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, int(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if self.global_only:
            upd, _ = self.attn(h[:, :1], h, h, key_padding_mask=key_padding_mask, need_weights=False)
            x = torch.cat([x[:, :1] + upd, x[:, 1:]], dim=1)
        else:
            upd, _ = self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)
            x = x + upd
        return x + self.mlp(self.norm2(x))


class AttentionScorer(nn.Module):
    """The ``self_attn`` / ``cross_attn`` variants: up-projection, blocks, then a scoring layer.

    ``x = Linear_up(LayerNorm([g; s_1..s_T]))`` (with ``score_input: squared_deviation`` the
    up-projection reads ``(LN(v) - mean_tiles LN(s))**2`` per view instead); ``num_layers`` pre-norm blocks (full
    self-attention for ``self_attn``; for ``cross_attn`` only the thumbnail token attends, so
    tiles do not interact); the logits are the thumbnail query's scaled dot products with the
    tile keys of a final multi-head scoring layer. With ``identity_init`` the query projection
    starts at zero, so the attention is uniform and every weight is exactly 1.
    """

    def __init__(self, summary_dim: int, cfg: Any, global_only: bool = False):
        super().__init__()
        dim, heads = cfg.hidden_size, cfg.num_heads
        self.heads = heads
        self.head_dim = dim // heads
        self.score_input = getattr(cfg, "score_input", "summary")
        self.in_norm = nn.LayerNorm(summary_dim)
        self.up = nn.Linear(summary_dim, dim)
        self.blocks = nn.ModuleList(
            _Block(dim, heads, cfg.mlp_ratio, cfg.dropout, global_only) for _ in range(cfg.num_layers)
        )
        self.score_norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        if cfg.identity_init:
            nn.init.zeros_(self.query.weight)
            nn.init.zeros_(self.query.bias)

    def encode(self, tokens: torch.Tensor, tile_mask: torch.Tensor) -> torch.Tensor:
        """The normalised output of the blocks, ``[B, 1 + T, hidden]`` (thumbnail in slot 0)."""
        h = self.in_norm(tokens)
        if self.score_input == "squared_deviation":
            # per channel, (view - mean of the image's tiles)^2: how unlike the other tiles, without a sign
            m = tile_mask[..., None].to(h.dtype)
            mean = (h[:, 1:] * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
            h = (h - mean) ** 2
        x = self.up(h)
        # key padding: the thumbnail slot is always valid; True marks padding for nn.MultiheadAttention
        pad = torch.cat([torch.zeros_like(tile_mask[:, :1]), ~tile_mask], dim=1)
        for block in self.blocks:
            x = block(x, pad)
        return self.score_norm(x)

    def score(self, q: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Per-head scaled dot products of the query ``q [B, hidden]`` with the tile keys of ``h``."""
        b = h.shape[0]
        q = q.view(b, 1, self.heads, self.head_dim).transpose(1, 2)  # [B, H, 1, d]
        k = self.key(h[:, 1:]).view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, d]
        return (q @ k.transpose(-1, -2)).squeeze(-2) / math.sqrt(self.head_dim)  # [B, H, T]

    def forward(self, tokens: torch.Tensor, tile_mask: torch.Tensor) -> torch.Tensor:
        h = self.encode(tokens, tile_mask)
        return self.score(self.query(h[:, 0]), h)

    def is_identity(self) -> bool:
        """Whether every logit is 0 for any input (the query projection is all zeros)."""
        return not bool(self.query.weight.any()) and not bool(self.query.bias.any())


class CosineScorer(nn.Module):
    """The training-free ``cosine`` variant: ``logits_i = cos(g, s_i) / cosine_temperature``."""

    def __init__(self, summary_dim: int, cfg: Any):
        super().__init__()
        self.tau = cfg.cosine_temperature

    def forward(self, tokens: torch.Tensor, tile_mask: torch.Tensor) -> torch.Tensor:
        t = tokens.float()
        return F.cosine_similarity(t[:, :1], t[:, 1:], dim=-1) / self.tau


class TextGuidedScorer(AttentionScorer):
    """The question-aware variants ``text_guided`` and ``text_cross_attn`` (beyond the paper).

    As [`AttentionScorer`][gswa_plugin.weighting.AttentionScorer] (``self_attn`` blocks for
    ``text_guided``, thumbnail-only blocks for ``text_cross_attn``), but the scoring query also
    reads the request's text: ``q = W_q h_g + W_t Linear_up(LayerNorm(t))``, where ``t`` is one
    vector per image (the adapter's pooled prompt embedding, width ``text_dim``). The tile keys are
    unchanged (``score_input`` applies as for the image-only variants), so a question can move
    the weight between tiles of one image. With
    ``identity_init`` both query projections start at zero: every logit is 0 and every weight
    exactly 1, for any image and any text.
    """

    #: GSWAModule passes ``text`` to variants that set this.
    uses_text = True

    def __init__(self, summary_dim: int, cfg: Any, text_dim: int, global_only: bool = False):
        super().__init__(summary_dim, cfg, global_only=global_only)
        dim = cfg.hidden_size
        self.text_dim = text_dim
        self.text_norm = nn.LayerNorm(text_dim)
        self.text_up = nn.Linear(text_dim, dim)
        self.text_query = nn.Linear(dim, dim)
        if cfg.identity_init:
            nn.init.zeros_(self.text_query.weight)
            nn.init.zeros_(self.text_query.bias)

    def forward(self, tokens: torch.Tensor, tile_mask: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        if text is None and self.is_identity():  # no text, but every logit is 0 for any text
            text = tokens.new_zeros(tokens.shape[0], self.text_dim)
        if text is None or text.shape != (tokens.shape[0], self.text_dim):
            got = None if text is None else tuple(text.shape)
            raise LayoutError(
                f"the question-aware variant needs one text vector of width {self.text_dim} per image "
                f"({tokens.shape[0]} images), got {got}"
            )
        h = self.encode(tokens, tile_mask)
        t = self.text_up(self.text_norm(text.to(h.dtype)))
        return self.score(self.query(h[:, 0]) + self.text_query(t), h)

    def is_identity(self) -> bool:
        """Whether every logit is 0 for any input and text (both query projections are zero)."""
        return super().is_identity() and not bool(self.text_query.weight.any()) and not bool(self.text_query.bias.any())


def text_guided(summary_dim: int, cfg: Any, text_dim: int) -> nn.Module:
    """Factory of the ``text_guided`` variant (self-attention blocks, text-conditioned query)."""
    return TextGuidedScorer(summary_dim, cfg, text_dim, global_only=False)


def text_cross_attn(summary_dim: int, cfg: Any, text_dim: int) -> nn.Module:
    """Factory of the ``text_cross_attn`` variant (thumbnail-only blocks, text-conditioned query)."""
    return TextGuidedScorer(summary_dim, cfg, text_dim, global_only=True)


# A factory with ``needs_text`` is called as ``factory(summary_dim, config, text_dim=...)``, with
# the width of the host's input embeddings (see gswa_plugin.api.enable).
text_guided.needs_text = True  # type: ignore[attr-defined]
text_cross_attn.needs_text = True  # type: ignore[attr-defined]

#: The question-aware variants (registered by the built-in plugin beside BUILTIN_VARIANTS).
TEXT_VARIANTS: dict[str, Callable[..., nn.Module]] = {
    "text_guided": text_guided,
    "text_cross_attn": text_cross_attn,
}


#: A variant factory: ``(summary_dim, config) -> nn.Module`` whose ``forward(tokens, tile_mask)``
#: returns logits ``[images, tiles]`` or ``[images, heads, tiles]``.
VariantFactory = Callable[[int, Any], nn.Module]

BUILTIN_VARIANTS: dict[str, VariantFactory] = {
    "self_attn": lambda d, cfg: AttentionScorer(d, cfg, global_only=False),
    "cross_attn": lambda d, cfg: AttentionScorer(d, cfg, global_only=True),
    "cosine": CosineScorer,
}


class GSWAModule(nn.Module):
    """GSWA for one host: summaries + layout -> one weight per view.

    Args:
        summary_dim: width of the per-view summaries the adapter provides.
        config: a [`GSWAConfig`][gswa_plugin.config.GSWAConfig].
        scorer: the variant's module (built from its factory).
    """

    def __init__(self, summary_dim: int, config: Any, scorer: nn.Module):
        super().__init__()
        self.summary_dim = summary_dim
        self.config = config
        self.scorer = scorer

    def is_identity(self) -> bool:
        """Whether every view's weight is exactly 1 for any input and any grouping of views into
        images (an untrained ``self_attn``/``cross_attn`` GSWA with ``global_weight: 1``). A
        variant says so with an ``is_identity()`` method; one without it is never the identity."""
        check = getattr(self.scorer, "is_identity", None)
        return self.config.global_weight == 1.0 and callable(check) and bool(check())

    @property
    def uses_text(self) -> bool:
        """Whether the variant reads the request's text (``forward`` then needs ``text``)."""
        return bool(getattr(self.scorer, "uses_text", False))

    def forward(self, summaries: torch.Tensor, layout: TileLayout, text: torch.Tensor | None = None) -> torch.Tensor:
        """Weight of every flat view ``[views]`` (float32).

        ``text``: ``[images, text_dim]``, one pooled text vector per image, for variants that
        read the request (``uses_text``); ignored by the others."""
        if summaries.shape[-1] != self.summary_dim:
            raise LayoutError(
                f"GSWA was built for summaries of width {self.summary_dim}, got {summaries.shape[-1]}"
            )
        ref = next(self.parameters(), None)
        if ref is not None:
            summaries = summaries.to(ref.dtype)
        padded = pad_summaries(summaries, layout)
        if self.uses_text:
            logits = self.scorer(padded.tokens, padded.tile_mask, text)
        else:
            logits = self.scorer(padded.tokens, padded.tile_mask)
        tile_w = logits_to_weights(logits, padded.tile_mask, self.config.temperature, self.config.min_weight)
        # slot 0 holds each image's thumbnail: prepend its weight, then gather every view's
        # weight by (image, slot). A single-view image is one tile whose weight is exactly 1.
        glob = torch.full_like(tile_w[:, :1], self.config.global_weight)
        per_slot = torch.cat([glob, tile_w], dim=1)
        return per_slot[padded.image_index, padded.slot]


def _target_cross_entropy(
    w: torch.Tensor, score: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The part [`importance_loss`][gswa_plugin.weighting.importance_loss] and
    [`distinctiveness_loss`][gswa_plugin.weighting.distinctiveness_loss] share, on padded tiles.

    ``w`` (GSWA's tile weights), ``score`` (detached) and ``mask`` are ``[images, T_max]``. Per image
    with at least two tiles, ``score`` is standardised over the image's tiles and turned into the
    target ``softmax(z / temperature)`` (a spread below 1e-4 of the scores' mean size counts as none:
    a uniform target); the result is the cross-entropy from it to GSWA's distribution
    ``w_i / sum(w)``, averaged over those images (0 when there is none)."""
    n = mask.sum(-1)
    valid = n >= 2
    m = mask.to(score.dtype)
    nf = n.clamp_min(1).to(score.dtype)[:, None]
    mean = (score * m).sum(-1, keepdim=True) / nf
    std = (((score - mean) ** 2 * m).sum(-1, keepdim=True) / nf).sqrt()
    # a spread below 1e-4 of the scores' size is rounding (two tiles are always equally distinct): no preference
    floor = ((score.abs() * m).sum(-1, keepdim=True) / nf * 1e-4).clamp_min(torch.finfo(score.dtype).tiny ** 0.5)
    z = ((score - mean) / torch.maximum(std, floor)).masked_fill(~mask, float("-inf"))
    target = torch.softmax(z / temperature, dim=-1).masked_fill(~mask, 0.0)
    q = (w / w.masked_fill(~mask, 0.0).sum(-1, keepdim=True).clamp_min(1e-12)).clamp_min(1e-12)
    per_image = -(target * q.log()).masked_fill(~mask, 0.0).sum(-1)
    return (per_image * valid.to(per_image.dtype)).sum() / valid.sum().clamp_min(1).to(per_image.dtype)


def importance_loss(
    weights: torch.Tensor, grads: torch.Tensor, layout: TileLayout, temperature: float = 1.0
) -> torch.Tensor:
    """An unsupervised training term: GSWA's tile distribution against the answer loss's own
    per-tile marginal benefit (beyond the paper).

    ``grads`` is ``dL/dw`` of the task loss with respect to the flat view weights ``weights``
    (``[views]``; detached). Per image with at least two tiles, the tiles' ``-dL/dw`` (how much
    the loss falls if the tile's weight rises) is standardised over the image's tiles and turned
    into a target distribution ``softmax(z / temperature)``; the term is the cross-entropy from it
    to GSWA's distribution ``w_i / sum(w)``, averaged over those images. The thumbnail is left out.

    Why: through the softmax a tile of low weight gets a gradient that vanishes with its weight
    (``dw_i/ds_i ~ w_i``), and in the ``value`` mode the language model still reads a
    low-weight tile, so the loss alone stops moving a weight that locked early on the wrong tiles.
    The standardised target has the same strength whatever the gradients' size. It never sees
    where the information is: only the task loss's gradient.
    """
    if weights.shape != grads.shape or weights.dim() != 1:
        raise LayoutError(
            f"importance_loss needs flat per-view weights and their gradients of one shape, got "
            f"{tuple(weights.shape)} and {tuple(grads.shape)}"
        )
    padded = pad_summaries(torch.stack([weights.float(), -grads.detach().float()], dim=-1), layout)
    return _target_cross_entropy(padded.tokens[:, 1:, 0], padded.tokens[:, 1:, 1], padded.tile_mask, temperature)


def _padded_distinctiveness(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``d`` on padded tiles: ``h`` the layer-normed tile summaries ``[images, T_max, D]``, ``mask``
    ``[images, T_max]``; 0 for padding and for images with fewer than two tiles."""
    m = mask[..., None].to(h.dtype)
    mean = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    return (((h - mean) ** 2) * m).sum(-1) * (mask.sum(-1, keepdim=True) >= 2)


def tile_distinctiveness(summaries: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """How unlike the other tiles of its image each view is: ``d_i = sum_c (LN0(s_i) - mean_j LN0(s_j))_c**2``.

    ``summaries``: the flat per-view summaries GSWA reads (``[views, D]``); ``LN0`` is a layer norm
    without parameters and the mean runs over the image's tiles (the thumbnail left out). Returns
    ``[views]`` (float32, detached); thumbnails and single-view images get 0. Parameter-free: the
    ``squared_deviation`` score input summed over channels, before any training."""
    if summaries.dim() != 2 or summaries.shape[0] != layout.num_views:
        raise LayoutError(
            f"tile_distinctiveness needs flat summaries [views, dim] with {layout.num_views} views, "
            f"got {tuple(summaries.shape)}"
        )
    s = F.layer_norm(summaries.detach().float(), summaries.shape[-1:])
    padded = pad_summaries(s, layout)
    d = _padded_distinctiveness(padded.tokens[:, 1:], padded.tile_mask)  # [images, T_max]
    per_slot = torch.cat([torch.zeros_like(d[:, :1]), d], dim=1)  # slot 0: the thumbnail
    return per_slot[padded.image_index, padded.slot]


def distinctiveness_loss(
    weights: torch.Tensor, summaries: torch.Tensor, layout: TileLayout, temperature: float = 1.0
) -> torch.Tensor:
    """An unsupervised training term: GSWA's tile distribution against how distinct each tile is
    within its image (beyond the paper).

    ``weights``: GSWA's flat per-view weights (``[views]``); ``summaries``: the flat per-view
    summaries GSWA read (``[views, D]``; detached here). Per image with at least two tiles,
    [`tile_distinctiveness`][gswa_plugin.weighting.tile_distinctiveness] is standardised over the image's tiles and turned into the target
    ``softmax(z / temperature)``; the term is the cross-entropy from it to ``w_i / sum(w)``, averaged
    over those images (the thumbnail is left out), as in [`importance_loss`][gswa_plugin.weighting.importance_loss]. Send its gradient
    to GSWA's parameters only (``loss.backward(inputs=gswa_params)``): the summaries are the host's.

    Why: it gives GSWA a reason to keep every distinct tile high that does not depend on whether
    the task loss, at that moment, asks for the tile; it never sees where the information is.
    """
    if (weights.dim() != 1 or summaries.dim() != 2 or summaries.shape[0] != weights.shape[0]
            or weights.shape[0] != layout.num_views):
        raise LayoutError(
            f"distinctiveness_loss needs flat per-view weights [views] and summaries [views, dim] of the "
            f"same views (the layout's {layout.num_views}), got {tuple(weights.shape)} and {tuple(summaries.shape)}"
        )
    s = F.layer_norm(summaries.detach().float(), summaries.shape[-1:])
    # weights and summaries padded together, once
    padded = pad_summaries(torch.cat([weights.float()[:, None], s], dim=-1), layout)
    w, h, mask = padded.tokens[:, 1:, 0], padded.tokens[:, 1:, 1:], padded.tile_mask
    return _target_cross_entropy(w, _padded_distinctiveness(h, mask), mask, temperature)


def distinct_term(
    module: nn.Module,
    summaries: torch.Tensor,
    layout: TileLayout,
    temperature: float = 1.0,
    text: torch.Tensor | None = None,
) -> torch.Tensor:
    """[`distinctiveness_loss`][gswa_plugin.weighting.distinctiveness_loss] of the weights ``module`` gives to *detached* summaries (and text).

    What the ``distinct_weight`` key adds to a training forward (see
    [`aux_loss`][gswa_plugin.api.aux_loss]): GSWA runs a second time on the same inputs, cut off
    from the host's graph, so the term's gradient reaches GSWA's parameters only and it can be
    added to the task loss before one ``backward()``. The second run costs one more GSWA forward
    (a small share of the image encoding; see the docs page 'Cost benchmark')."""
    s = summaries.detach()
    if getattr(module, "uses_text", False):
        weights = module(s, layout, text=None if text is None else text.detach())
    else:
        weights = module(s, layout)
    return distinctiveness_loss(weights, s, layout, temperature)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

