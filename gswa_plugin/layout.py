"""How the views at the seam split into images, and what flows through the ``gswa_process_tiles`` hook.

A host adapter reads the host's tiling into a [`TileLayout`][gswa_plugin.layout.TileLayout] (views per image, where the
global thumbnail sits) and hands every view's features and summaries over as a
[`TileBatch`][gswa_plugin.layout.TileBatch]. [`pad_summaries`][gswa_plugin.layout.pad_summaries] lays the flat views
out per image for the weighting
math in [`gswa_plugin.weighting`][gswa_plugin.weighting]. No host code and no learned parameters live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

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


def pad_summaries(summaries: torch.Tensor, layout: TileLayout) -> Padded:
    """Scatter flat per-view summaries into a padded per-image tensor (vectorised)."""
    device = summaries.device
    counts = torch.tensor(layout.views_per_image, device=device)
    n_images = counts.shape[0]
    image_index = torch.repeat_interleave(torch.arange(n_images, device=device), counts)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(summaries.shape[0], device=device) - starts[image_index]
    if layout.global_position == "none":
        has_thumb = torch.zeros_like(counts, dtype=torch.bool)
    else:
        has_thumb = counts > 1
    view_has_thumb = has_thumb[image_index]
    if layout.global_position == "first":
        is_thumb = view_has_thumb & (pos == 0)
        tile_pos = torch.where(view_has_thumb, pos - 1, pos)
    else:
        is_thumb = view_has_thumb & (pos == counts[image_index] - 1)
        tile_pos = pos
    slot = torch.where(is_thumb, torch.zeros_like(pos), tile_pos + 1)
    n_tiles = counts - has_thumb.long()
    # sizes come from the Python layout, not from device tensors: no host-device sync on a GPU
    tiles_py = layout.tiles_per_image()
    t_max = max(tiles_py) if tiles_py else 0
    tokens = summaries.new_zeros(n_images, 1 + t_max, summaries.shape[-1])
    tokens = tokens.index_put((image_index, slot), summaries)
    tile_mask = torch.arange(t_max, device=device)[None, :] < n_tiles[:, None]
    if any(not layout.has_global(n) for n in layout.views_per_image):
        mean = tokens[:, 1:].sum(1) / n_tiles[:, None].to(tokens.dtype)
        tokens = torch.cat([torch.where(has_thumb[:, None], tokens[:, 0], mean)[:, None], tokens[:, 1:]], dim=1)
    return Padded(tokens, tile_mask, image_index, slot, has_thumb)



def layout_from_counts(counts: Sequence[int], global_position: GlobalPosition) -> TileLayout:
    return TileLayout(tuple(int(c) for c in counts), global_position)
