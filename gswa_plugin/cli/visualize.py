"""``gswa visualize``: weight pictures of a model's GSWA over images."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from gswa_plugin.cli import app
from gswa_plugin.cli._common import MODEL_HELP, console, err_console, reported_errors


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """A missing image or checkpoint, or a missing package, as a one-line error and exit status 2."""
    try:
        yield
    except (FileNotFoundError, ImportError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=2) from exc


@app.command("visualize")
def visualize_cmd(
    image: List[str] = typer.Option(
        ..., "--image", "-i", help="Image file, folder of images, or scikit-image sample name (repeatable)."
    ),
    out: Path = typer.Option(
        Path("gswa_weight_maps"), "--out", "-o", help="Folder for the pictures (one PNG per image)."
    ),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    gswa: Optional[str] = typer.Option(
        None, help="Saved GSWA directory or YAML with a `gswa:` block. Default: the packaged default (cosine)."
    ),
    max_tiles: Optional[int] = typer.Option(None, help="Tile cap per image (the host's own when unset)."),
    width: int = typer.Option(768, help="Width of each picture in pixels."),
    cmap: str = typer.Option("magma", help="Matplotlib colormap of the shading."),
    dtype: str = typer.Option("float32", help="dtype of a loaded checkpoint."),
    device: str = typer.Option("cpu", help="Device of a loaded checkpoint."),
    keep: Optional[str] = typer.Option(
        None, help="Also draw which visual tokens a token budget keeps (a fraction such as 0.25, or a token count)."
    ),
    budget_method: str = typer.Option("gswa", help="With --keep: gswa, uniform, random or globalcom."),
    question: Optional[List[str]] = typer.Option(
        None,
        "--question",
        "-q",
        help="A question asked about each image (repeatable): one panel per question, side by side. "
        "Only the question-aware variants (text_guided, text_cross_attn) give different weights.",
    ),
) -> None:
    """Draw each image with its tiles shaded by GSWA weight and the weights written on them
    (with ``--keep``: also ``NAME-kept.png``, the tokens a budget keeps)."""
    from gswa_plugin.tools.hosts import is_tiny, load_host
    from gswa_plugin.tools.visualize import RANDOM_WEIGHTS_NOTE, check_image_sources, visualize_paths

    with reported_errors(), input_errors():
        check_image_sources(image)
        with console.status("loading the model..."):
            net, processor, handle = load_host(model, gswa, max_tiles=max_tiles, dtype=dtype, device=device)
        if handle is None:
            err_console.print("[bold red]error:[/] gswa=none leaves GSWA off: there are no weights to draw")
            raise typer.Exit(code=2)
        note = f"model: {model}" if not is_tiny(model) else RANDOM_WEIGHTS_NOTE.format(name=model or "tiny")
        results = visualize_paths(net, processor, image, out, width=width, cmap=cmap, note=note, questions=question)
        kept = _kept_pictures(net, processor, results, keep, budget_method, width) if keep is not None else {}
    for path, w in results:
        thumb = f", thumbnail {w.thumbnail_weight:.2f}" if w.thumbnail_weight is not None else ""
        console.print(
            f"{path}  ({w.grid[0]}x{w.grid[1]} tiles, weights {min(w.tile_weights):.2f}..{max(w.tile_weights):.2f}{thumb})"
        )
        if path in kept:
            console.print(f"{kept[path][0]}  (kept {kept[path][1]} of {kept[path][2]} visual tokens)")


def _kept_pictures(net, processor, results, keep: str, method: str, width: int) -> dict:
    """``NAME-kept.png`` beside each weight picture: which tokens the budget keeps."""
    from gswa_plugin.budget import parse_keep
    from gswa_plugin.tools.budget_map import kept_tokens, kept_tokens_map

    out = {}
    for path, w in results:
        k = kept_tokens(net, processor, w.image, {"keep": parse_keep(keep), "method": method})
        target = path.with_name(f"{path.stem}-kept.png")
        kept_tokens_map(w.image, k, f"token budget keep={keep}, method {method}, on {w.name}", width).save(target)
        out[path] = (target, k.kept, k.total)
    return out
