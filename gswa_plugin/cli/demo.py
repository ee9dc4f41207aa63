"""``gswa demo``: the main job on an embedded default, no network needed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from gswa_plugin.cli import app
from gswa_plugin.cli._common import MODEL_HELP, console, reported_errors


@app.command("demo")
def demo_cmd(
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    image: Optional[str] = typer.Option(
        None, help="Image file or scikit-image sample name. Default: skimage.data.coffee()."
    ),
    config: Optional[Path] = typer.Option(
        None, help="GSWA YAML (top-level `gswa:` block). Default: the packaged default.yaml."
    ),
    out: Path = typer.Option(Path("gswa_demo_out"), help="Folder for the weight picture."),
    prompt: str = typer.Option("describe the image", help="Question asked about the image."),
    max_new_tokens: int = typer.Option(8, help="Tokens to generate."),
) -> None:
    """Enable GSWA on a model, generate once on a photograph, print the tile weights and draw them."""
    from gswa_plugin.tools.demo import run_demo

    with reported_errors():
        try:
            with console.status("tiling the image, enabling GSWA, generating..."):
                res = run_demo(
                    model=model, image=image, config=config, out=out, prompt=prompt, max_new_tokens=max_new_tokens
                )
        except FileNotFoundError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(code=2) from exc
    rows, cols = res.grid
    table = Table(title=f"GSWA tile weights ({res.variant}, adapter {res.adapter}; {rows}x{cols} tiles, mean 1)")
    table.add_column("tile")
    table.add_column("row")
    table.add_column("col")
    table.add_column("weight", justify="right")
    table.add_column("", justify="left")
    top = max(res.tile_weights)
    for i, w in enumerate(res.tile_weights):
        r, c = divmod(i, cols)
        table.add_row(str(i), str(r), str(c), f"{w:.3f}", "█" * max(1, round(20 * w / top)))
    if res.thumbnail_weight is not None:
        table.add_row("thumbnail", "-", "-", f"{res.thumbnail_weight:.3f}", "")
    console.print(table)
    if model is None or model.startswith("tiny"):  # a host built in code (an unknown name failed above)
        console.print(
            f"[dim]model: {model or 'tiny'}, built in code with random weights: the tile weights show the method "
            "on this picture, not a judgement of it, and the text is noise[/]"
        )
    else:
        console.print(f"[dim]model: {model}[/]", highlight=False)
    console.print(f"generated: {res.generated_text!r}")
    console.print(f"picture: {res.picture}")
