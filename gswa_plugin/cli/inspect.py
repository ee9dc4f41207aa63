"""``gswa remove-tiles``, ``gswa ablate``, ``gswa diagnose``: the paper's inspection experiments."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from gswa_plugin.cli import app
from gswa_plugin.cli._common import MODEL_HELP, console, err_console, reported_errors
from gswa_plugin.cli.visualize import input_errors

_MODEL_HELP = MODEL_HELP
_IMAGE_HELP = "Image file, folder of images, or scikit-image sample name (repeatable)."
_TASK_HELP = "lmms-eval task(s) instead of images, comma-separated (needs `pip install 'gswa-plugin[eval]'`)."


def _images(image: List[str]) -> list:
    from gswa_plugin.tools.visualize import load_images

    return load_images(image)


def _need_images_or_task(image: Optional[List[str]], task: Optional[str]) -> None:
    if bool(image) == bool(task):
        err_console.print("[bold red]error:[/] give either --image (one or more) or --task, not both or neither")
        raise typer.Exit(code=2)
    if task:
        import importlib.util

        if importlib.util.find_spec("lmms_eval") is None:
            err_console.print(
                "[bold red]error:[/] --task runs lmms-eval, which is not installed: "
                "`pip install 'gswa-plugin[eval]'` (see docs/evaluation.md)"
            )
            raise typer.Exit(code=2)


def _fmt(x: float) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.4g}"


@app.command("remove-tiles")
def remove_tiles_cmd(
    image: Optional[List[str]] = typer.Option(None, "--image", "-i", help=_IMAGE_HELP),
    task: Optional[str] = typer.Option(None, help=_TASK_HELP),
    model: Optional[str] = typer.Option(None, help=_MODEL_HELP + " Required with --task."),
    gswa: Optional[str] = typer.Option(
        None, help="Saved GSWA directory or YAML. Default: the packaged default (cosine)."
    ),
    k: int = typer.Option(3, help="Tiles removed per image."),
    by: str = typer.Option("weight", help="Rank tiles by `weight` (GSWA) or `similarity` (to the global view)."),
    which: str = typer.Option("highest", help="Remove the `highest` or `lowest` ranked tiles."),
    threshold: Optional[float] = typer.Option(None, help="Instead of k: remove every tile whose weight is below this."),
    mode: str = typer.Option("zero", help="`zero` the tiles' features, or `drop` them with their image tokens."),
    max_tiles: Optional[int] = typer.Option(None, help="Tile cap per image."),
    limit: Optional[int] = typer.Option(None, help="With --task: evaluate only this many documents per task."),
    include_path: Optional[str] = typer.Option(None, help="With --task: extra lmms-eval task folder (local datasets)."),
    lmms_model: str = typer.Option("gswa_hf", help="With --task: the lmms-eval model name (gswa_internvl, ...)."),
) -> None:
    """Remove the k tiles with the highest/lowest weight (or similarity) and report the change."""
    from gswa_plugin.tools import inspect as it

    _need_images_or_task(image, task)
    with reported_errors(), input_errors():
        spec = it.RemovalSpec(k=0 if threshold is not None else k, by=by, which=which, threshold=threshold, mode=mode)
        if task:
            if model is None:
                err_console.print("[bold red]error:[/] --task needs --model (a checkpoint lmms-eval can load)")
                raise typer.Exit(code=2)
            extra = {"max_tiles": max_tiles}
            scores = it.remove_tiles_on_task(
                model, gswa or "default", spec, task.split(","), lmms_model, limit, include_path, extra
            )
            table = Table(title=f"Tile removal ({spec.describe()}) on {task}")
            for col in ("task", "metric", "baseline", "removed", "change"):
                table.add_column(col, justify="right" if col in ("baseline", "removed", "change") else "left")
            for t, row in scores.items():
                for metric, (b, r) in row.items():
                    table.add_row(t, metric, _fmt(b), _fmt(r), _fmt(r - b))
            console.print(table)
            return
        from gswa_plugin.tools.hosts import load_host
        from gswa_plugin.tools.visualize import check_image_sources

        check_image_sources(image or [])
        net, processor, handle = load_host(model, gswa or None, max_tiles=max_tiles)
        if handle is None:
            err_console.print("[bold red]error:[/] tile removal ranks tiles by GSWA: give a GSWA checkpoint or YAML")
            raise typer.Exit(code=2)
        results = it.remove_tiles_on_images(net, processor, _images(image or []), spec)
    table = Table(title=f"Tile removal ({spec.describe()}); change of the next-token distribution")
    for col in ("image", "tiles", "removed", "max |Δlogit|", "KL", "top-1 same"):
        table.add_column(col, no_wrap=col == "image")
    for r in results:
        table.add_row(
            Path(r.name).name,
            str(len(r.tile_weights)),
            ",".join(map(str, r.removed)) or "-",
            _fmt(r.change.max_abs_logit_change),
            _fmt(r.change.kl_divergence),
            "yes" if r.change.top1_same else "no",
        )
    console.print(table)


def _parse_checkpoints(checkpoint: List[str]) -> dict[str, str]:
    out = {}
    for item in checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            err_console.print(
                f"[bold red]error:[/] --checkpoint takes NAME=PATH (e.g. cosine=runs/cosine), got {item!r}"
            )
            raise typer.Exit(code=2)
        out[name] = path
    return out


@app.command("ablate")
def ablate_cmd(
    checkpoint: List[str] = typer.Option(
        ...,
        "--checkpoint",
        "-c",
        help="NAME=PATH of a saved GSWA directory or YAML (repeatable), e.g. cosine=out/cosine.",
    ),
    image: Optional[List[str]] = typer.Option(None, "--image", "-i", help=_IMAGE_HELP),
    task: Optional[str] = typer.Option(None, help=_TASK_HELP),
    model: Optional[str] = typer.Option(None, help=_MODEL_HELP + " Required with --task."),
    max_tiles: Optional[int] = typer.Option(None, help="Tile cap per image."),
    limit: Optional[int] = typer.Option(None, help="With --task: evaluate only this many documents per task."),
    include_path: Optional[str] = typer.Option(None, help="With --task: extra lmms-eval task folder (local datasets)."),
    lmms_model: str = typer.Option("gswa_hf", help="With --task: the lmms-eval model name."),
) -> None:
    """The same images or task under several GSWA checkpoints (e.g. cosine, cross_attn, self_attn) and without GSWA."""
    from gswa_plugin.tools import inspect as it

    _need_images_or_task(image, task)
    ckpts = _parse_checkpoints(checkpoint)
    with reported_errors(), input_errors():
        if task:
            if model is None:
                err_console.print("[bold red]error:[/] --task needs --model (a checkpoint lmms-eval can load)")
                raise typer.Exit(code=2)
            scores = it.ablate_on_task(
                model, ckpts, task.split(","), lmms_model, limit, include_path, {"max_tiles": max_tiles}
            )
            metrics = sorted({(t, m) for per in scores.values() for t, row in per.items() for m in row})
            table = Table(title=f"Variant ablation on {task}")
            table.add_column("gswa")
            for t, m in metrics:
                table.add_column(f"{t}\n{m}", justify="right")
            for name, per in scores.items():
                table.add_row(name, *(_fmt(per.get(t, {}).get(m, math.nan)) for t, m in metrics))
            console.print(table)
            return
        from gswa_plugin.tools.hosts import load_host
        from gswa_plugin.tools.visualize import check_image_sources

        check_image_sources(image or [])
        net, processor, _ = load_host(model, "none", max_tiles=max_tiles)
        rows = it.ablate_on_images(net, processor, ckpts, _images(image or []))
    table = Table(title="Variant ablation over images (change against the host without GSWA)")
    for col in ("gswa", "variant", "entropy_rel", "top_share", "max/min", "mean KL", "top-1 agreement", "max |Δlogit|"):
        table.add_column(col, no_wrap=col in ("gswa", "variant"))
    for r in rows:
        s = r.stats
        table.add_row(
            r.name,
            r.variant,
            _fmt(s.get("entropy_rel", math.nan)),
            _fmt(s.get("top_share", math.nan)),
            _fmt(s.get("max_min_ratio", math.nan)),
            _fmt(r.mean_kl_vs_baseline),
            f"{r.top1_agreement:.0%}",
            _fmt(r.max_abs_logit_change),
        )
    console.print(table)


@app.command("diagnose")
def diagnose_cmd(
    image: List[str] = typer.Option(..., "--image", "-i", help=_IMAGE_HELP),
    model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
    gswa: Optional[str] = typer.Option(
        None, help="Saved GSWA directory or YAML. Default: the packaged default (cosine)."
    ),
    max_tiles: Optional[int] = typer.Option(None, help="Tile cap per image."),
    fail: bool = typer.Option(False, "--fail", help="Exit with status 1 when a failure signature is found."),
    uniform_entropy: Optional[float] = typer.Option(
        None, help="Relative entropy at or above which weights count as uniform."
    ),
    tile_dominance_share: Optional[float] = typer.Option(
        None, help="Excess top share at or above which one tile dominates."
    ),
    thumbnail_ratio: Optional[float] = typer.Option(
        None, help="Thumbnail / mean tile weight at or above which the thumbnail dominates."
    ),
) -> None:
    """Report the failure signatures (uniform, one-tile or thumbnail dominance) of a GSWA checkpoint over images."""
    from gswa_plugin.tools.diagnostics import Thresholds
    from gswa_plugin.tools.hosts import load_host
    from gswa_plugin.tools.inspect import diagnose_images
    from gswa_plugin.tools.visualize import check_image_sources

    given = {
        "uniform_entropy": uniform_entropy,
        "tile_dominance_share": tile_dominance_share,
        "thumbnail_ratio": thumbnail_ratio,
    }
    thresholds = Thresholds(**{k: v for k, v in given.items() if v is not None})
    with reported_errors(), input_errors():
        check_image_sources(image)
        net, processor, handle = load_host(model, gswa, max_tiles=max_tiles)
        if handle is None:
            err_console.print("[bold red]error:[/] diagnostics judge GSWA's weights: give a GSWA checkpoint or YAML")
            raise typer.Exit(code=2)
        diagnosis = diagnose_images(net, processor, _images(image), thresholds=thresholds)
    table = Table(title=f"GSWA weights ({handle.config.variant}) over {len(diagnosis.per_image)} image(s)")
    table.add_column("image")
    table.add_column("tiles", justify="right")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    table.add_column("thumbnail", justify="right")
    for name, w, thumb in diagnosis.per_image:
        table.add_row(
            Path(name).name, str(len(w)), f"{min(w):.3f}", f"{max(w):.3f}", "-" if thumb is None else f"{thumb:.3f}"
        )
    console.print(table)
    stats = ", ".join(f"{k}={v:.4g}" for k, v in diagnosis.stats.items())
    console.print(f"statistics: {stats}")
    if diagnosis.healthy:
        console.print("[green]no failure signature found[/]")
        return
    for line in diagnosis.signatures:
        console.print(f"[bold yellow]signature[/] {line}", highlight=False)
    if fail:
        raise typer.Exit(code=1)
