"""The token budget: which visual tokens reach the language model, given the tile weights.

Pure math on tensors (no host code): the host side that shortens a call's ``input_ids`` and
hands the kept features to the host lives in [`gswa_plugin.adapters._budget`][gswa_plugin.adapters._budget].

For every image, ``keep`` (a fraction of its visual tokens, or a token count) gives its budget
``B``. The thumbnail gets ``thumbnail_share * B`` tokens (or, when ``thumbnail_share`` is empty,
the share of one tile of average weight); the tiles share the rest in proportion to a per-tile
share, with no tile above its token count, and integer quotas that add up to the budget exactly
([`allocate`][gswa_plugin.budget.allocate]: water-filling, then largest remainder). A tile may get
0 tokens. Inside each view the tokens with the highest in-tile score are kept
([`token_scores`][gswa_plugin.budget.token_scores]) and stay in their original order.

Methods (all through [`select`][gswa_plugin.budget.select]):

- ``gswa``: tile shares are the GSWA weights (raised to ``sharpness``).
- ``uniform``: every tile gets the same share (the same fraction of every tile).
- ``random``: uniform shares, and the kept tokens of each view drawn at random (seeded).
- ``globalcom``: shares ``softmax(cos(g, s_i) / cosine_temperature)`` from the thumbnail and tile
  summaries (the ``cosine`` variant's scores, GlobalCom²-style, training-free).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from gswa_plugin.errors import ConfigError
from gswa_plugin.layout import TileLayout

#: Budget methods users pick by name.
METHODS: tuple[str, ...] = ("gswa", "uniform", "random", "globalcom")
#: In-tile token scores.
IN_TILE: tuple[str, ...] = ("norm", "summary", "thumbnail")


def parse_keep(keep: float | int | str) -> float | int:
    """``keep`` as a command line or ``--model_args`` gives it: digits only is a token count, any
    other number a fraction (``"0.5"``, ``"1.0"``)."""
    if isinstance(keep, str):
        text = keep.strip()
        try:
            return int(text) if text.isdigit() else float(text)
        except ValueError:
            raise ConfigError([f"`keep` must be a fraction such as 0.5 or a token count, got {keep!r}"]) from None
    return keep


def image_budget(keep: float | int, n_tokens: int) -> int:
    """Tokens kept of an image with ``n_tokens`` visual tokens: ``round(keep * n_tokens)`` for a
    fraction (at least 1), ``min(keep, n_tokens)`` for a count."""
    if isinstance(keep, bool) or keep <= 0:
        raise ConfigError([f"`budget.keep` must be a fraction in (0, 1] or a token count >= 2, got {keep!r}"])
    if isinstance(keep, int):
        return min(int(keep), n_tokens)
    return min(n_tokens, max(1, int(math.floor(keep * n_tokens + 0.5))))


def allocate(
    total: int, shares: Sequence[float], capacity: Sequence[int], tiebreak: Sequence[float] | None = None
) -> list[int]:
    """Integer quotas that add up to ``min(total, sum(capacity))``, proportional to ``shares``
    with no quota above its capacity.

    Water-filling: the budget is split in proportion to the shares of the items not yet full;
    an item that would exceed its capacity is filled and the rest split again. The fractional
    quotas are then floored and the missing units go to the largest remainders (ties to the
    larger ``tiebreak``, then to the earlier item; with equal shares and one token per item the
    tie-break decides alone). Items of share 0 get 0 unless every open item has share 0 (then equal shares).
    """
    n = len(shares)
    if len(capacity) != n:
        raise ValueError(f"{n} shares but {len(capacity)} capacities")
    caps = [max(0, int(c)) for c in capacity]
    total = min(max(0, int(total)), sum(caps))
    alloc = [0.0] * n
    open_ = [i for i in range(n) if caps[i] > 0]
    remaining = float(total)
    while open_ and remaining > 1e-9:
        s = [max(0.0, float(shares[i])) for i in open_]
        if sum(s) <= 0:
            s = [1.0] * len(open_)
        tot = sum(s)
        give = {i: remaining * si / tot for i, si in zip(open_, s)}
        full = [i for i in open_ if alloc[i] + give[i] >= caps[i] - 1e-9]
        if not full:
            for i in open_:
                alloc[i] += give[i]
            break
        for i in full:
            remaining -= caps[i] - alloc[i]
            alloc[i] = float(caps[i])
        open_ = [i for i in open_ if i not in full]
    quota = [min(caps[i], int(math.floor(alloc[i] + 1e-9))) for i in range(n)]
    missing = total - sum(quota)
    order = sorted(
        (i for i in range(n) if quota[i] < caps[i]),
        key=lambda i: (-round(alloc[i] - quota[i], 9), -(tiebreak[i] if tiebreak is not None else 0.0), i),
    )
    for i in order[:missing]:
        quota[i] += 1
    return quota


def view_shares(
    method: str,
    weights: torch.Tensor,
    summaries: torch.Tensor | None,
    layout: TileLayout,
    *,
    sharpness: float = 1.0,
    cosine_temperature: float = 0.1,
) -> list[list[float]]:
    """Per image, the share of each of its tiles (thumbnail excluded), in the host's tile order.

    Args:
        method: one of [`METHODS`][gswa_plugin.budget.METHODS].
        weights: ``[views]`` GSWA weight of every view (used by ``gswa``).
        summaries: ``[views, dim]`` per-view summaries (used by ``globalcom``).
        layout: how the views split into images.
        sharpness: exponent on the GSWA weights (``gswa``).
        cosine_temperature: temperature of the ``globalcom`` softmax.
    """
    if method not in METHODS:
        raise ConfigError([f"`budget.method` must be one of {', '.join(METHODS)}, got {method!r}"])
    out: list[list[float]] = []
    start = 0
    globals_ = layout.global_indices()
    for n, g in zip(layout.views_per_image, globals_):
        tiles = [v for v in range(start, start + n) if v != g]
        if method == "gswa":
            w = weights.detach().float()[tiles].clamp_min(0)
            out.append((w ** sharpness).tolist())
        elif method == "globalcom" and g is not None and summaries is not None:
            s = summaries.detach().float()
            cos = F.cosine_similarity(s[g][None], s[tiles], dim=-1) / cosine_temperature
            out.append(torch.softmax(cos, dim=0).tolist())
        else:  # uniform, random, or globalcom without a thumbnail
            out.append([1.0] * len(tiles))
        start += n
    return out


def token_scores(features: torch.Tensor, view_of: torch.Tensor, layout: TileLayout, in_tile: str) -> torch.Tensor:
    """In-tile score of every token ``[tokens]`` of a flat token list; higher is kept first.

    ``norm``: the L2 norm of the token's feature. ``summary``: cosine similarity to the mean of
    its own view's tokens. ``thumbnail``: cosine similarity to the mean of its image's thumbnail
    tokens (its own view's mean where the image has no thumbnail).

    Args:
        features: ``[tokens, dim]``.
        view_of: ``[tokens]`` the view of each token (``-1``: a token outside every view, such as
            a newline; its score is not used).
        layout: how the views split into images.
        in_tile: one of [`IN_TILE`][gswa_plugin.budget.IN_TILE].
    """
    f = features.detach().float()
    if in_tile == "norm":
        return f.norm(dim=-1)
    if in_tile not in IN_TILE:
        raise ConfigError([f"`budget.in_tile` must be one of {', '.join(IN_TILE)}, got {in_tile!r}"])
    n_views = layout.num_views
    inside = view_of >= 0
    idx = view_of.clamp_min(0)
    sums = f.new_zeros(n_views, f.shape[1]).index_add_(0, idx[inside], f[inside])
    counts = f.new_zeros(n_views).index_add_(0, idx[inside], f.new_ones(int(inside.sum())))
    means = sums / counts.clamp_min(1)[:, None]
    if in_tile == "thumbnail":
        ref = means.clone()
        start = 0
        for n, g in zip(layout.views_per_image, layout.global_indices()):
            if g is not None:
                ref[start : start + n] = means[g]
            start += n
        means = ref
    return F.cosine_similarity(f, means[idx], dim=-1)


@dataclass
class Selection:
    """Which tokens of the seam's features are kept.

    Attributes:
        flat_mask: ``[tokens]`` bool, True where the token is kept, in the order the host fills its
            placeholders.
        view_of: ``[tokens]`` the view of each token (``-1``: always kept, e.g. a newline).
        quotas: tokens kept per view.
        budgets: tokens kept per image (tokens outside every view not counted).
        shape: ``(views, tokens)`` when every view has the same number of tokens in view order
            (then [`keep_mask`][gswa_plugin.budget.Selection.keep_mask] is that grid).
    """

    flat_mask: torch.Tensor
    view_of: torch.Tensor
    quotas: list[int]
    budgets: list[int]
    shape: tuple[int, int] | None = None

    @property
    def keep_mask(self) -> torch.Tensor:
        """``[views, tokens]`` kept flags (only for a ``[views, tokens, dim]`` selection)."""
        if self.shape is None:
            raise ValueError("this selection is over a flat token list, not a [views, tokens] grid")
        return self.flat_mask.reshape(self.shape)

    @property
    def num_kept(self) -> int:
        return int(self.flat_mask.sum())

    def view_of_kept(self) -> torch.Tensor:
        """``[kept]`` the view each kept token comes from, in order (``-1`` outside every view)."""
        return self.view_of[self.flat_mask]

    def gather(self, features: torch.Tensor) -> torch.Tensor:
        """``[kept, dim]`` the kept tokens of ``features`` (``[views, tokens, dim]`` or ``[tokens,
        dim]``) in order."""
        return features.reshape(-1, features.shape[-1])[self.flat_mask]


def select_tokens(
    features: torch.Tensor,
    view_of: torch.Tensor,
    weights: torch.Tensor,
    summaries: torch.Tensor | None,
    layout: TileLayout,
    keep: float | int,
    method: str = "gswa",
    in_tile: str = "norm",
    thumbnail_share: float | None = None,
    sharpness: float = 1.0,
    cosine_temperature: float = 0.1,
    seed: int = 0,
) -> Selection:
    """The tokens to keep of one forward's flat token list.

    Args:
        features: ``[tokens, dim]`` every token the host will receive, in its order.
        view_of: ``[tokens]`` the view of each token; ``-1`` for tokens outside every view (kept
            always and not counted in the budget, such as LLaVA-NeXT's newline tokens).
        weights: ``[views]`` the GSWA weight of every view.
        summaries: ``[views, dim]`` per-view summaries (``globalcom``).
        layout: how the views split into images.
        keep: a fraction in (0, 1] of each image's tokens, or a token count per image.
        method: one of [`METHODS`][gswa_plugin.budget.METHODS].
        in_tile: one of [`IN_TILE`][gswa_plugin.budget.IN_TILE] (ignored by ``random``).
        thumbnail_share: fraction of each image's budget given to its thumbnail; empty: the
            thumbnail counts as one tile of share equal to the mean tile share.
        sharpness: exponent on the GSWA weights (``gswa``).
        cosine_temperature: temperature of ``globalcom``.
        seed: seed of ``random``.

    Returns:
        A [`Selection`][gswa_plugin.budget.Selection].
    """
    n_views = layout.num_views
    view_of = view_of.to(features.device).long()
    if features.shape[0] != view_of.shape[0]:
        raise ValueError(f"{features.shape[0]} tokens but {view_of.shape[0]} view indices")
    shares = view_shares(method, weights, summaries, layout, sharpness=sharpness, cosine_temperature=cosine_temperature)
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        scores = torch.rand(features.shape[0], generator=g).to(features.device)
    else:
        scores = token_scores(features, view_of, layout, in_tile)
    inside = view_of >= 0
    caps = torch.bincount(view_of[inside], minlength=n_views).tolist()
    best = torch.full((n_views,), float("-inf"), device=scores.device)
    best = best.scatter_reduce(0, view_of[inside], scores[inside].float(), reduce="amax").tolist()
    quotas = [0] * n_views
    budgets = []
    start = 0
    for n, g, tile_shares in zip(layout.views_per_image, layout.global_indices(), shares):
        tiles = [v for v in range(start, start + n) if v != g]
        b = image_budget(keep, sum(caps[start : start + n]))
        budgets.append(b)
        if g is None:
            per = allocate(b, tile_shares, [caps[v] for v in tiles], [best[v] for v in tiles])
        elif thumbnail_share is None:
            mean = sum(tile_shares) / len(tile_shares) if tile_shares else 1.0
            per = allocate(b, tile_shares + [mean], [caps[v] for v in tiles + [g]], [best[v] for v in tiles + [g]])
            quotas[g] = per.pop()
        else:
            quotas[g] = min(caps[g], int(math.floor(thumbnail_share * b + 0.5)))
            per = allocate(b - quotas[g], tile_shares, [caps[v] for v in tiles], [best[v] for v in tiles])
            if sum(per) < b - quotas[g]:  # the tiles are full: the thumbnail takes the rest
                quotas[g] = min(caps[g], b - sum(per))
        for v, q in zip(tiles, per):
            quotas[v] = q
        start += n
    # rank of every token inside its view (0 = best), by a stable sort on (view, -score)
    order = torch.argsort(scores.float(), descending=True, stable=True)
    order = order[torch.argsort(view_of[order], stable=True)]
    first = torch.zeros(n_views + 1, dtype=torch.long, device=scores.device)
    first[1:] = torch.cumsum(torch.bincount(view_of[inside], minlength=n_views), 0)
    rank = torch.empty_like(order)
    pos = torch.arange(order.shape[0], device=scores.device)
    sorted_views = view_of[order]
    rank[order] = pos - torch.where(sorted_views >= 0, first[sorted_views.clamp_min(0)] + int((~inside).sum()), pos)
    quota = torch.tensor(quotas, device=scores.device)
    mask = torch.where(inside, rank < quota[view_of.clamp_min(0)], torch.ones_like(inside))
    return Selection(mask, view_of, quotas, budgets)


def select(
    features: torch.Tensor,
    weights: torch.Tensor,
    summaries: torch.Tensor | None,
    layout: TileLayout,
    keep: float | int,
    *options: Any,
    **named: Any,
) -> Selection:
    """[`select_tokens`][gswa_plugin.budget.select_tokens] for ``[views, tokens, dim]`` features
    (every view the same number of tokens, in view order: InternVL); the selection's
    ``keep_mask`` is then ``[views, tokens]``. The other arguments (``method``, ``in_tile``, ...)
    as there."""
    n_views, n_tokens = features.shape[0], features.shape[1]
    if n_views != layout.num_views:
        raise ValueError(f"{n_views} views of features but the layout describes {layout.num_views}")
    view_of = torch.arange(n_views, device=features.device).repeat_interleave(n_tokens)
    sel = select_tokens(features.reshape(-1, features.shape[-1]), view_of, weights, summaries, layout, keep, *options, **named)
    sel.shape = (n_views, n_tokens)
    return sel
