"""Pictures of GSWA weights: each tile of the image shaded by its weight, the number written on it.

Drawn with Pillow (compositing, text) and a matplotlib colormap, so the picture needs no
plotting backend. The shading is a semi-transparent colour overlay whose brightness rises with
the weight (colormap ``magma`` by default), so the brighter a tile, the more GSWA weighs it.

[`weight_map`][gswa_plugin.tools.visualize.weight_map] draws given weights;
[`image_weights`][gswa_plugin.tools.visualize.image_weights] runs a model with GSWA enabled on
one image and reads its weights back; [`visualize`][gswa_plugin.tools.visualize.visualize] does both and returns the
picture;
[`visualize_paths`][gswa_plugin.tools.visualize.visualize_paths] writes one PNG per image of a file or folder (``gswa
visualize``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from gswa_plugin.handle import get_handle

#: The photograph used when no image is given (a scikit-image sample).
DEFAULT_IMAGE = "coffee"
#: The caption line of pictures of a host built in code: its weights say nothing about the image.
RANDOM_WEIGHTS_NOTE = "model: {name} (built in code, RANDOM weights): the weights show the method, not a judgement"

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
    marked: Sequence[int] | None = None,
    note: str | None = None,
    legend: bool = True,
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
        marked: positions of tiles to cross out (e.g. the tiles a removal experiment took away).
        note: a last caption line, e.g. which model's weights these are or that they are random.
        legend: draw the colour bar (weight 0 to the largest tile weight) in the caption band.

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
        box = (
            round(c * width / cols),
            round(r * height / rows),
            round((c + 1) * width / cols),
            round((r + 1) * height / rows),
        )
        boxes.append(box)
        draw_o.rectangle(box, fill=tuple(int(v) for v in colour))
    shaded = Image.blend(base, overlay, OVERLAY_ALPHA)
    draw = ImageDraw.Draw(shaded)
    font = _font(max(12, min(width // cols, height // rows) // 5))
    for box, w in zip(boxes, weights):
        draw.rectangle(box, outline=(255, 255, 255), width=1)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        draw.text(
            (cx, cy), f"{w:.2f}", fill=(255, 255, 255), font=font, anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0)
        )
    for i in marked or ():
        x0, y0, x1, y1 = boxes[i]
        draw.line((x0, y0, x1, y1), fill=(0, 200, 255), width=4)
        draw.line((x0, y1, x1, y0), fill=(0, 200, 255), width=4)
    lines = [title] if title else []
    if thumbnail_weight is not None:
        share = thumbnail_weight / (thumbnail_weight + sum(weights))
        lines.append(
            f"thumbnail weight {thumbnail_weight:.2f} ({share:.0%} of all weight); tiles: mean {np.mean(weights):.2f}"
        )
    if note:
        lines.append(note)
    if not lines and not legend:
        return shaded
    cap_font = _font(16)
    pad = 8
    bar_h = 36 if legend else 0
    cap_h = pad + 22 * len(lines) + bar_h
    canvas = Image.new("RGB", (width, height + cap_h), (255, 255, 255))
    canvas.paste(shaded, (0, cap_h))
    cd = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        cd.text((pad, pad + 22 * k), line, fill=(0, 0, 0), font=cap_font)
    if legend:
        _colour_bar(
            cd, (pad + 14, pad + 22 * len(lines)), min(320, width - 2 * pad - 180), max(weights), cmap, cap_font
        )
    return canvas


def _colour_bar(
    draw: ImageDraw.ImageDraw, origin: tuple[int, int], length: int, top: float, cmap: str, font: Any
) -> None:
    """The shading's scale: weight 0 to ``top`` (the largest tile weight) as the overlay colours them."""
    x0, y0 = origin
    length = max(length, 60)
    steps = np.linspace(0.0, top, length)
    for i, colour in enumerate(weight_colours(steps, cmap, vmax=top)):
        draw.line((x0 + i, y0, x0 + i, y0 + 12), fill=tuple(int(v) for v in colour))
    draw.rectangle((x0, y0, x0 + length - 1, y0 + 12), outline=(0, 0, 0))
    small = _font(12)
    for frac in (0.0, 0.5, 1.0):
        x = x0 + round(frac * (length - 1))
        draw.line((x, y0 + 12, x, y0 + 16), fill=(0, 0, 0))
        draw.text((x, y0 + 17), f"{frac * top:.2f}", fill=(0, 0, 0), font=small, anchor="ma")
    draw.text((x0 + length + 10, y0 - 2), "tile weight (mean 1)", fill=(0, 0, 0), font=font)


# --- from a model ------------------------------------------------------------------------------
#: Image file suffixes ``gswa visualize`` picks up in a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: The question asked about each image while its weights are computed (GSWA's weights do not
#: depend on it; the forward needs a prompt holding the image tokens).
DEFAULT_QUESTION = "describe the image"


@dataclass
class ImageWeights:
    """GSWA's weights for one image, as one forward of a model computed them.

    Attributes:
        image: the image.
        name: a label (file name or sample name).
        tile_weights: one weight per tile, in the host's (row-major) tile order.
        thumbnail_weight: the thumbnail's weight; ``None`` where the image has a single view.
        grid: (rows, columns) of the tiling.
        similarity: cosine similarity of each tile's summary to the thumbnail's (the paper's
            "similarity to the global view"); ``None`` without a thumbnail.
    """

    image: Image.Image
    name: str
    tile_weights: list[float]
    thumbnail_weight: float | None
    grid: tuple[int, int]
    similarity: list[float] | None = None


def image_weights(
    model: Any, processor: Any, image: Image.Image, name: str = "image", question: str = DEFAULT_QUESTION
) -> ImageWeights:
    """Run one forward of ``model`` (GSWA enabled) on ``image`` and read back its tile weights.

    Raises:
        NotEnabledError: GSWA is not enabled on ``model``.
    """
    from gswa_plugin.tools.hosts import model_inputs

    handle = get_handle(model)
    inputs = model_inputs(model, processor, [image], question)
    with torch.no_grad():
        model(**inputs)
    batch = handle.last_batch
    tile_w = batch.tile_weights()[0].float().tolist()
    glob = batch.layout.global_indices()[0]
    thumb = float(batch.weights[glob]) if glob is not None else None
    sim = None
    if glob is not None:
        tiles = [i for i in range(batch.layout.views_per_image[0]) if i != glob]
        s = batch.summaries.float()
        sim = torch.nn.functional.cosine_similarity(s[tiles], s[glob][None], dim=-1).tolist()
    return ImageWeights(image, name, tile_w, thumb, grid_for(processor, image, len(tile_w)), sim)


def draw(
    weights: ImageWeights,
    title: str | None = None,
    width: int = 768,
    cmap: str = "magma",
    marked: Sequence[int] | None = None,
    note: str | None = None,
) -> Image.Image:
    """The [`weight_map`][gswa_plugin.tools.visualize.weight_map] picture of an
    [`ImageWeights`][gswa_plugin.tools.visualize.ImageWeights] (``marked`` tiles crossed out)."""
    return weight_map(
        weights.image,
        weights.tile_weights,
        weights.grid,
        weights.thumbnail_weight,
        title=title,
        width=width,
        cmap=cmap,
        marked=marked,
        note=note,
    )


def visualize(
    model: Any, processor: Any, image: Image.Image, title: str | None = None, width: int = 768, cmap: str = "magma"
) -> Image.Image:
    """The image with its tiles shaded by the weights GSWA gives them in ``model`` (a PIL image)."""
    weights = image_weights(model, processor, image)
    if title is None:
        handle = _handle(model)
        title = f"GSWA ({handle.config.variant}, adapter {handle.adapter.name})"
    return draw(weights, title=title, width=width, cmap=cmap)


def question_weights(
    model: Any,
    processor: Any,
    image: Image.Image,
    questions: Sequence[str],
    width: int = 768,
    cmap: str = "magma",
    note: str | None = None,
    name: str = "image",
) -> tuple[Image.Image, list[ImageWeights]]:
    """The weights GSWA gives ``image`` for each of ``questions``, drawn side by side (one
    panel per question, each titled with it). With an image-only variant every panel is the
    same; the question-aware ones (``text_guided``, ``text_cross_attn``) read the question.

    Returns:
        The picture and the weights of each question.
    """
    handle = _handle(model)
    if not questions:
        raise ValueError("question_weights needs at least one question")
    same = "" if getattr(handle.module, "uses_text", False) else " (image-only: same weights for any question)"
    panels, found = [], []
    for q in questions:
        w = image_weights(model, processor, image, name=name, question=q)
        found.append(w)
        title = f'{handle.config.variant}, question "{q}"{same}'
        panels.append(draw(w, title=title, width=width, cmap=cmap, note=note))
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 16 * (len(panels) - 1), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + 16
    return canvas, found


def _handle(model: Any) -> Any:

    return get_handle(model)


def find_images(path: str | os.PathLike[str]) -> list[Path]:
    """The image files at ``path``: the file itself, or a folder's images (recursively, sorted).

    Raises:
        FileNotFoundError: nothing at ``path``, or a folder without images.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
        return found
    raise FileNotFoundError(f"image not found: {p} (give an image file or a folder of images)")


def check_image_sources(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> None:
    """Fail fast, before a model loads, on a missing file or folder or a folder without images
    (a bare name is a scikit-image sample and is checked when it loads).

    Raises:
        FileNotFoundError: naming the input.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    for src in sources:
        text = str(src)
        if Path(text).exists():
            find_images(text)
        elif "/" in text or os.sep in text or Path(text).suffix.lower() in IMAGE_SUFFIXES:
            raise FileNotFoundError(
                f"image not found: {text} (--image takes an image file, a folder of images, or a scikit-image "
                "sample name such as coffee)"
            )


def load_images(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[tuple[str, Image.Image]]:
    """(name, RGB image) for a file, a folder, a scikit-image sample name, or a list of those."""

    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    out: list[tuple[str, Image.Image]] = []
    for src in sources:
        if Path(src).exists():
            out.extend((str(f), Image.open(f).convert("RGB")) for f in find_images(src))
        else:
            img, name = load_image(str(src))
            out.append((name, img))
    return out


def visualize_paths(
    model: Any,
    processor: Any,
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    width: int = 768,
    cmap: str = "magma",
    progress: bool = True,
    note: str | None = None,
    questions: Sequence[str] | None = None,
) -> list[tuple[Path, ImageWeights]]:
    """Write one weight picture (PNG) per image of ``source`` into ``out``, with a progress bar.

    ``note`` is written under each picture's title (``gswa visualize``: the model, or that its
    weights are random). With ``questions``, each picture holds one panel per question side by
    side ([`question_weights`][gswa_plugin.tools.visualize.question_weights]); the weights
    returned are the first question's.

    Returns:
        (picture path, weights) per image, in order.
    """
    from tqdm.auto import tqdm

    handle = _handle(model)
    images = load_images(source)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[tuple[Path, ImageWeights]] = []
    used: set[str] = set()
    for name, img in tqdm(images, desc="weight maps", unit="image", disable=not progress or len(images) < 2):
        w = image_weights(model, processor, img, name=name)
        # a file keeps its stem; a sample name ("skimage.data.coffee") its last part
        stem = (Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name.rsplit(".", 1)[-1]) or "image"
        target = stem
        n = 1
        while target in used:
            n += 1
            target = f"{stem}-{n}"
        used.add(target)
        path = out_dir / f"{target}.png"
        if questions:
            picture, ws = question_weights(model, processor, img, questions, width=width, cmap=cmap, note=note, name=name)
            picture.save(path)
            results.append((path, ws[0]))
            continue
        title = f"GSWA ({handle.config.variant}, adapter {handle.adapter.name}) on {Path(name).name}"
        draw(w, title=title, width=width, cmap=cmap, note=note).save(path)
        results.append((path, w))
    return results


# --- images and tiling grids (shared with `gswa demo`) ----------------------------------------
def guess_grid(image: Image.Image, n_tiles: int) -> tuple[int, int]:
    """(rows, columns) with ``rows * columns == n_tiles`` closest to the image's aspect ratio."""
    aspect = image.width / image.height
    pairs = [(r, n_tiles // r) for r in range(1, n_tiles + 1) if n_tiles % r == 0]
    return min(pairs, key=lambda rc: abs(math.log((rc[1] / rc[0]) / aspect)))


def grid_for(processor: Any, image: Image.Image, n_tiles: int) -> tuple[int, int]:
    """The tiling grid of ``image``: exact for InternVL-style processors, else the best aspect match."""
    ip = getattr(processor, "image_processor", None)
    size = getattr(ip, "size", None)
    if getattr(ip, "crop_to_patches", False) and size is not None:
        tile = size["height"] if isinstance(size, dict) else size.height
        rows, cols = internvl_grid(image, tile, ip.min_patches, ip.max_patches)
        if rows * cols == n_tiles:
            return rows, cols
    return guess_grid(image, n_tiles)


def load_image(image: str | os.PathLike[str] | Image.Image | None) -> tuple[Image.Image, str]:
    """A PIL image from a path, a scikit-image sample name, or the default photograph."""
    from gswa_plugin.testing.tiny import sample_image

    if isinstance(image, Image.Image):
        return image.convert("RGB"), "image"
    if image is None:
        return sample_image(DEFAULT_IMAGE), f"skimage.data.{DEFAULT_IMAGE}"
    path = Path(image)
    if path.is_file():
        return Image.open(path).convert("RGB"), path.name
    try:
        return sample_image(str(image)), f"skimage.data.{image}"
    except AttributeError:
        raise FileNotFoundError(f"image not found: {image} (give a file path or a scikit-image sample name)") from None
