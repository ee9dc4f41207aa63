"""Pictures of GSWA weights: each tile of the image shaded by its weight, the number written on it.

Drawn with Pillow (compositing, text) and a matplotlib colormap, so the picture needs no
plotting backend. The shading is a semi-transparent colour overlay whose brightness rises with
the weight (colormap ``magma`` by default), so the brighter a tile, the more GSWA weighs it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

#: Opacity of the weight overlay.
OVERLAY_ALPHA = 0.55


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def internvl_grid(image: Image.Image, tile_size: int, min_tiles: int = 1, max_tiles: int = 12) -> tuple[int, int]:
    """(rows, columns) of the grid InternVL's tiling (``GotOcr2ImageProcessor``) cuts ``image`` into."""
    try:  # the PIL module imports without torchvision; both hold the same function
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas
    except ImportError:  # pragma: no cover - older transformers
        from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    cols, rows = get_optimal_tiled_canvas((image.height, image.width), (tile_size, tile_size), min_tiles, max_tiles)
    return rows, cols


def weight_colours(weights: Sequence[float], cmap: str = "magma", vmax: float | None = None) -> np.ndarray:
    """RGB colour (0-255) of each weight: ``weight / vmax`` through the colormap (``vmax``: the largest weight)."""
    import matplotlib

    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    top = float(vmax if vmax is not None else max(w.max(initial=0.0), 1e-12))
    # keep clear of the colormap's black end so the photo stays visible under low weights
    levels = 0.15 + 0.85 * np.clip(w / top, 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](levels)
    return (rgba[:, :3] * 255).round().astype(np.uint8)


def weight_map(
    image: Image.Image,
    tile_weights: Sequence[float] | torch.Tensor,
    grid: tuple[int, int],
    thumbnail_weight: float | None = None,
    title: str | None = None,
    width: int = 768,
    cmap: str = "magma",
) -> Image.Image:
    """The image with its tiles shaded by GSWA weight and the weights written on them.

    Args:
        image: the original image.
        tile_weights: one weight per tile, row-major (as ``gswa_plugin.last_weights`` gives them).
        grid: (rows, columns) of the tiling.
        thumbnail_weight: the thumbnail's weight, shown with its share of the total.
        title: a caption line above the picture.
        width: width of the drawn image in pixels.
        cmap: matplotlib colormap for the shading.

    Returns:
        An RGB PIL image.
    """
    weights = [float(w) for w in (tile_weights.tolist() if isinstance(tile_weights, torch.Tensor) else tile_weights)]
    rows, cols = grid
    if rows * cols != len(weights):
        raise ValueError(
            f"a {rows}x{cols} grid has {rows * cols} tiles but {len(weights)} weights were given; "
            "pass the grid the processor used (e.g. `internvl_grid(image, tile_size, max_tiles=...)`)"
        )
    height = max(1, round(image.height * width / image.width))
    base = image.convert("RGB").resize((width, height), Image.BICUBIC)
    colours = weight_colours(weights, cmap)
    overlay = Image.new("RGB", base.size)
    draw_o = ImageDraw.Draw(overlay)
    boxes = []
    for i, colour in enumerate(colours):
        r, c = divmod(i, cols)
        box = (round(c * width / cols), round(r * height / rows), round((c + 1) * width / cols), round((r + 1) * height / rows))
        boxes.append(box)
        draw_o.rectangle(box, fill=tuple(int(v) for v in colour))
    shaded = Image.blend(base, overlay, OVERLAY_ALPHA)
    draw = ImageDraw.Draw(shaded)
    font = _font(max(12, min(width // cols, height // rows) // 5))
    for box, w in zip(boxes, weights):
        draw.rectangle(box, outline=(255, 255, 255), width=1)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        draw.text((cx, cy), f"{w:.2f}", fill=(255, 255, 255), font=font, anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))
    lines = [title] if title else []
    if thumbnail_weight is not None:
        share = thumbnail_weight / (thumbnail_weight + sum(weights))
        lines.append(f"thumbnail weight {thumbnail_weight:.2f} ({share:.0%} of all weight); tiles: mean {np.mean(weights):.2f}")
    if not lines:
        return shaded
    cap_font = _font(16)
    pad = 8
    cap_h = pad + 22 * len(lines)
    canvas = Image.new("RGB", (width, height + cap_h), (255, 255, 255))
    canvas.paste(shaded, (0, cap_h))
    cd = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        cd.text((pad, pad + 22 * k), line, fill=(0, 0, 0), font=cap_font)
    return canvas
