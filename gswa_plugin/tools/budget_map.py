"""Pictures of which visual tokens a token budget keeps (``gswa visualize --keep 0.25``).

Each tile of the image is cut into its tokens' cells (InternVL: a 16 x 16 grid per 448 px tile,
row-major, as the pixel shuffle orders them); the cells of dropped tokens are darkened. The
thumbnail is drawn beside the tiles the same way. Supported where the budget is
(native InternVL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from gswa_plugin.errors import UnsupportedRequestError
from gswa_plugin.handle import get_handle


@dataclass
class KeptTokens:
    """What the budget kept of one image.

    Attributes:
        grid: (rows, columns) of tiles.
        tile_masks: per tile (row-major), ``[side, side]`` bool, True where the token was kept.
        thumbnail_mask: the thumbnail's mask (``None`` for a single-view image).
        kept: tokens kept, of ``total``.
    """

    grid: tuple[int, int]
    tile_masks: list[np.ndarray]
    thumbnail_mask: np.ndarray | None
    kept: int
    total: int


def kept_tokens(model: Any, processor: Any, image: Image.Image, budget: dict[str, Any]) -> KeptTokens:
    """Run one forward of ``model`` on ``image`` under ``budget`` (the model's own budget comes
    back afterwards) and read which tokens were kept."""
    from gswa_plugin.api import set_budget
    from gswa_plugin.tools.hosts import model_inputs
    from gswa_plugin.tools.visualize import DEFAULT_QUESTION, grid_for

    handle = get_handle(model)
    before = handle.config.budget
    set_budget(model, budget)
    try:
        inputs = model_inputs(model, processor, [image], DEFAULT_QUESTION)
        with torch.no_grad():
            model(**inputs)
        plan = handle.last_budget
        layout = handle.last_batch.layout
    finally:
        set_budget(model, before)
    if plan.selection.shape is None:
        raise UnsupportedRequestError(
            f"the kept-token picture draws square token grids per tile (InternVL); the '{handle.adapter.name}' "
            "host packs its tokens (unpadding, newlines), which this picture does not draw yet"
        )
    mask = plan.selection.keep_mask.cpu().numpy()
    side = int(math.isqrt(mask.shape[1]))
    glob = layout.global_indices()[0]
    tiles = [v for v in range(layout.views_per_image[0]) if v != glob]
    to_grid = [mask[v].reshape(side, side) for v in tiles]
    thumb = mask[glob].reshape(side, side) if glob is not None else None
    return KeptTokens(grid_for(processor, image, len(tiles)), to_grid, thumb, int(mask.sum()), int(mask.size))


def _shade(picture: Image.Image, cells: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Darken the dropped cells of ``cells`` over ``box`` of ``picture`` (in place)."""
    x0, y0, x1, y1 = box
    side = cells.shape[0]
    arr = np.asarray(picture).copy()
    for r in range(side):
        for c in range(side):
            if not cells[r, c]:
                a0, a1 = y0 + (y1 - y0) * r // side, y0 + (y1 - y0) * (r + 1) // side
                b0, b1 = x0 + (x1 - x0) * c // side, x0 + (x1 - x0) * (c + 1) // side
                arr[a0:a1, b0:b1] = (arr[a0:a1, b0:b1] * 0.18).astype(arr.dtype)
    picture.paste(Image.fromarray(arr))


def kept_tokens_map(image: Image.Image, kept: KeptTokens, title: str, width: int = 768) -> Image.Image:
    """The image tiled as the host tiled it, dropped tokens darkened, the thumbnail beside it."""
    rows, cols = kept.grid
    thumb_w = width // 4 if kept.thumbnail_mask is not None else 0
    tiles_w = width - thumb_w - (8 if thumb_w else 0)
    cell = tiles_w // cols
    tiles = image.convert("RGB").resize((cell * cols, cell * rows))
    for i, cells in enumerate(kept.tile_masks):
        r, c = divmod(i, cols)
        _shade(tiles, cells, (c * cell, r * cell, (c + 1) * cell, (r + 1) * cell))
    band = 46
    out = Image.new("RGB", (width, max(cell * rows, thumb_w) + band), "white")
    out.paste(tiles, (0, band))
    draw = ImageDraw.Draw(out)
    for r in range(rows + 1):
        draw.line([(0, band + r * cell), (cell * cols, band + r * cell)], fill="white", width=1)
    for c in range(cols + 1):
        draw.line([(c * cell, band), (c * cell, band + cell * rows)], fill="white", width=1)
    if kept.thumbnail_mask is not None:
        thumb = image.convert("RGB").resize((thumb_w, thumb_w))
        _shade(thumb, kept.thumbnail_mask, (0, 0, thumb_w, thumb_w))
        out.paste(thumb, (width - thumb_w, band))
        draw.text((width - thumb_w, band - 14), "thumbnail", fill="black")
    draw.text((4, 4), title, fill="black")
    draw.text((4, 20), f"kept {kept.kept} of {kept.total} visual tokens (dark: dropped)", fill="black")
    return out
