"""How the views at the seam split into images, and what flows through the ``gswa_process_tiles`` hook.

A host adapter reads the host's tiling into a [`TileLayout`][gswa_plugin.layout.TileLayout] (views per image, where the
global thumbnail sits) and hands every view's features and summaries over as a
[`TileBatch`][gswa_plugin.layout.TileBatch]. [`pad_summaries`][gswa_plugin.layout.pad_summaries] lays the flat views
out per image for the weighting
math in [`gswa_plugin.weighting`][gswa_plugin.weighting]. No host code and no learned parameters live here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from gswa_plugin._host import host_array, to_device
from gswa_plugin.errors import LayoutError

GlobalPosition = Literal["first", "last", "none"]


@dataclass(frozen=True)
class TileLayout:
    """How the flat views at the seam split into images.

    Attributes:
        views_per_image: number of views (tiles plus thumbnail) of each image, in the order
            the host stacked them.
        global_position: where each multi-view image's thumbnail sits among its views:
            ``"first"`` (LLaVA-NeXT, Gemma3), ``"last"`` (InternVL, Idefics3) or ``"none"``
            (tiles only, no thumbnail).
    """

    views_per_image: tuple[int, ...]
    global_position: GlobalPosition = "last"

    def __post_init__(self) -> None:
        if self.global_position not in ("first", "last", "none"):
            raise LayoutError(f"global_position must be 'first', 'last' or 'none', got {self.global_position!r}")
        if any(int(n) < 1 for n in self.views_per_image):
            raise LayoutError(f"every image needs at least one view, got views_per_image={self.views_per_image}")
        object.__setattr__(self, "views_per_image", tuple(int(n) for n in self.views_per_image))

    @property
    def num_views(self) -> int:
        return sum(self.views_per_image)

    @property
    def num_images(self) -> int:
        return len(self.views_per_image)

    def has_global(self, n_views: int) -> bool:
        """Whether an image with ``n_views`` views carries a thumbnail."""
        return self.global_position != "none" and n_views > 1

    def global_indices(self) -> list[int | None]:
        """Flat index of each image's thumbnail (``None`` where it has none)."""
        out: list[int | None] = []
        start = 0
        for n in self.views_per_image:
            if not self.has_global(n):
                out.append(None)
            else:
                out.append(start if self.global_position == "first" else start + n - 1)
            start += n
        return out

    def tiles_per_image(self) -> list[int]:
        """Number of weighted tiles of each image (views minus the thumbnail)."""
        return [n - 1 if self.has_global(n) else n for n in self.views_per_image]


@dataclass
class TileBatch:
    """What flows through the ``gswa_process_tiles`` hook.

    Attributes:
        features: ``[views, tokens, dim]`` visual features of every view of every image, in the
            host's order (after the projector in the ``embed`` mode).
        summaries: ``[views, summary_dim]`` one summary per view (CLS or mean).
        layout: how the views split into images.
        weights: ``[views]`` weight of each view once computed (thumbnail and single-view images
            included), ``None`` before.
        extra: free space for plugins and adapters (e.g. ``pixel_values`` for pictures).
    """

    features: torch.Tensor
    summaries: torch.Tensor
    layout: TileLayout
    weights: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.layout.num_views
        if self.features.shape[0] != n or self.summaries.shape[0] != n:
            raise LayoutError(
                f"the layout describes {n} views ({list(self.layout.views_per_image)} per image) but "
                f"{self.features.shape[0]} feature rows and {self.summaries.shape[0]} summaries reached the seam"
            )

    def tile_weights(self) -> list[torch.Tensor]:
        """Per image, the weights of its tiles (thumbnail excluded), in the host's tile order."""
        if self.weights is None:
            return []
        w = self.weights.detach()
        out = []
        start = 0
        for n in self.layout.views_per_image:
            ws = w[start : start + n]
            if self.layout.has_global(n):
                ws = ws[1:] if self.layout.global_position == "first" else ws[:-1]
            out.append(ws)
            start += n
        return out


# --- padding ---------------------------------------------------------------------------------
@dataclass
class Padded:
    """Summaries of a batch laid out per image: thumbnail in slot 0, tiles in slots 1..T.

    An image without a thumbnail (a ``none`` layout) gets the mean of its tile summaries in
    slot 0, so it is still weighted; an image with a single view is one tile of weight 1.
    """

    tokens: torch.Tensor  # [images, 1 + T_max, D]
    tile_mask: torch.Tensor  # [images, T_max] True where a tile exists
    image_index: torch.Tensor  # [views] image of each flat view
    slot: torch.Tensor  # [views] slot of each flat view in `tokens`
    has_thumbnail: torch.Tensor  # [images] bool


@functools.lru_cache(maxsize=64)
def _host_indices(layout: TileLayout) -> tuple[np.ndarray, ...]:
    """The index arrays of ``pad_summaries`` for one layout, computed on the host from the
    Python counts (cached: a training run sees few distinct layouts)."""
    counts = np.asarray(layout.views_per_image, dtype=np.int64)
    has_thumb = np.array([layout.has_global(int(n)) for n in counts], dtype=bool)
    image_index = np.repeat(np.arange(counts.size), counts)
    pos = np.arange(counts.sum()) - (np.cumsum(counts) - counts)[image_index]
    view_has_thumb = has_thumb[image_index]
    if layout.global_position == "first":
        is_thumb = view_has_thumb & (pos == 0)
        tile_pos = np.where(view_has_thumb, pos - 1, pos)
    else:
        is_thumb = view_has_thumb & (pos == counts[image_index] - 1)
        tile_pos = pos
    slot = np.where(is_thumb, 0, tile_pos + 1)
    n_tiles = counts - has_thumb
    t_max = int(n_tiles.max()) if n_tiles.size else 0
    tile_mask = np.arange(t_max)[None, :] < n_tiles[:, None]
    return image_index, slot, has_thumb, n_tiles, tile_mask


def pad_summaries(summaries: torch.Tensor, layout: TileLayout) -> Padded:
    """Scatter flat per-view summaries into a padded per-image tensor (vectorised).

    The indices come from the Python layout on the host and reach the device in one non-blocking
    copy: no host-device synchronisation."""
    device = summaries.device
    prepared = getattr(layout, "_indices", None)
    if prepared is not None and prepared[0] == device:
        image_index, slot, has_thumb, n_tiles, tile_mask = prepared[1]
    else:
        image_index, slot, has_thumb, n_tiles, tile_mask = _device_indices(layout, device)
    n_images, t_max = tile_mask.shape
    tokens = summaries.new_zeros(n_images, 1 + t_max, summaries.shape[-1])
    tokens = tokens.index_put((image_index, slot), summaries)
    if any(not layout.has_global(n) for n in layout.views_per_image):
        mean = tokens[:, 1:].sum(1) / n_tiles[:, None].to(tokens.dtype)
        tokens = torch.cat([torch.where(has_thumb[:, None], tokens[:, 0], mean)[:, None], tokens[:, 1:]], dim=1)
    return Padded(tokens, tile_mask, image_index, slot, has_thumb)


def prepare_indices(layout: TileLayout, device: torch.device) -> None:
    """Attach ``layout``'s padding indices on ``device`` to it (done by the seam's host step, so
    that [`pad_summaries`][gswa_plugin.layout.pad_summaries] finds them without a graph break)."""
    object.__setattr__(layout, "_indices", (torch.device(device), _device_indices(layout, device)))


@torch.compiler.disable
def _device_indices(layout: TileLayout, device: torch.device) -> tuple[torch.Tensor, ...]:
    from gswa_plugin._host import to_device

    host = _host_indices(layout)
    packed = np.concatenate([a.astype(np.int64).reshape(-1) for a in host])
    flat = to_device(packed, device)  # one copy for all five
    out, at = [], 0
    for a in host:
        part = flat[at : at + a.size].view(a.shape)
        out.append(part.bool() if a.dtype == bool else part)
        at += a.size
    return tuple(out)


def layout_from_counts(counts: Sequence[int], global_position: GlobalPosition) -> TileLayout:
    return TileLayout(tuple(int(c) for c in counts), global_position)


# --- image positions of a call (the modes and the seam share them) -----------------------------
def _image_slots(ids: np.ndarray, mask: np.ndarray, n_tokens: int, what: str) -> np.ndarray:
    """On the host: for every position ``[batch, seq]``, 0 for text, ``1 + j`` for the ``j``-th
    weighted token, following the rows repeated by beam search (see
    [`fill_image_positions`][gswa_plugin.apply.fill_image_positions])."""
    n_positions = int(mask.sum())
    rows = mask.shape[0]
    if n_positions != n_tokens and n_tokens and n_positions and n_positions % n_tokens == 0:
        k = n_positions // n_tokens
        if rows % k == 0 and ids.shape == mask.shape and (ids.reshape(rows // k, k, -1) == ids[::k, None]).all():
            first = mask[::k]
            slots = np.where(first, np.cumsum(first.reshape(-1)).reshape(first.shape), 0)
            return np.repeat(slots, k, axis=0)
    if n_positions != n_tokens:
        raise LayoutError(
            f"the input holds {n_positions} image placeholder tokens but GSWA weighted {what} "
            f"({n_tokens} tokens); the image features of this call must come from the same forward as its "
            "input_ids (precomputed image features bypass GSWA)"
        )
    return np.where(mask, np.cumsum(mask.reshape(-1)).reshape(mask.shape), 0)


@torch.compiler.disable
def image_slots(
    input_ids: Any,
    token_id: int | None,
    n_weighted: int | None,
    device: torch.device,
    tokens_per_view: int = 1,
    handle: Any = None,
    mask: Any = None,
    what: str = "",
) -> torch.Tensor | None:
    """Where a call's weighted tokens sit, as an index on ``device``: ``[batch, seq]`` holding 0
    for text and ``1 + v`` at the tokens of item ``v`` (a view, or a token when
    ``tokens_per_view`` is 1), so that ``cat([1, weights])[slots]`` gives every position its weight.

    Worked out on the host from one read of ``input_ids`` (shared with the seam through
    ``handle``'s [`host_ids`][gswa_plugin.handle.GSWAHandle.host_ids]), then copied to the device
    without a sync; hidden from ``torch.compile`` as a whole (one graph break).

    Args:
        input_ids: ``[batch, seq]`` token ids (a tensor or a host array).
        token_id: the placeholder token (or ``mask`` gives the image positions).
        n_weighted: number of weighted items; ``None`` when none were computed (then an empty
            index is returned if the call holds image positions, for the caller's error).
        device: where the index goes.
        tokens_per_view: placeholder tokens per weighted item.
        handle: the [`GSWAHandle`][gswa_plugin.handle.GSWAHandle] whose host copy to reuse.
        mask: ``[batch, seq]`` image positions, instead of ``token_id``.
        what: what was weighted, for the error message.

    Returns:
        The index, or ``None`` when the call holds no image position.

    Raises:
        LayoutError: the image positions match neither the weighted tokens nor a repeat of them.
    """
    ids = handle.host_ids(input_ids) if handle is not None and isinstance(input_ids, torch.Tensor) else host_array(input_ids)
    m = (ids == token_id) if mask is None else host_array(mask).astype(bool)
    if not m.any():
        return None
    if n_weighted is None:
        return torch.zeros(0, dtype=torch.long, device=device)
    slots = _image_slots(ids, m, n_weighted * tokens_per_view, what or f"{n_weighted} items")
    if tokens_per_view > 1:  # token j belongs to item j // tokens_per_view
        slots = np.where(slots > 0, (slots - 1) // tokens_per_view + 1, 0)
    return to_device(slots, device)
