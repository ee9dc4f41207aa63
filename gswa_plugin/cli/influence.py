"""``gswa influence``: can this configuration's weights move the language model at all?"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from gswa_plugin.cli import app
from gswa_plugin.cli._common import MODEL_HELP, console, reported_errors
from gswa_plugin.errors import ConfigError

#: The ``--model`` value of the default host built in code; ``gswa adapters``' families have their own
#: (``tiny-llava-next``, ...: ``gswa_plugin.tools.hosts.TINY_HOSTS``).
TINY = "tiny"


def load_host(model: str) -> tuple[Any, Any]:
    """``(model, processor)``: a host built in code for ``tiny``/``tiny-<family>``, else ``from_pretrained(model)``."""
    from gswa_plugin.tools.hosts import is_tiny, load_pretrained, tiny_host

    if is_tiny(model):
        return tiny_host(model)
    return load_pretrained(model)


def load_image(image: str) -> Any:
    """A picture file, or the name of a scikit-image sample photograph (``astronaut``, ``coffee``, ...)."""
    from PIL import Image

    from gswa_plugin.testing.tiny import sample_image

    if Path(image).is_file():
        return Image.open(image).convert("RGB")
    try:
        return sample_image(image)
    except AttributeError as exc:
        raise ConfigError(
            [f"--image {image!r} is neither a file nor a scikit-image sample (astronaut, coffee, chelsea, page, ...)"]
        ) from exc


def host_inputs(processor: Any, image: Any, prompt: str) -> Any:
    """The processor's inputs for one image and a prompt (the image placeholder goes first)."""
    token = getattr(processor, "image_token", None) or "<image>"
    return processor(text=[f"{token} {prompt}"], images=[image], return_tensors="pt")


@app.command("influence")
def influence_cmd(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    image: str = typer.Option(
        ..., "--image", help="Image file, or a scikit-image sample name (astronaut, coffee, ...)."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML file with a `gswa:` block (default settings if omitted)."
    ),
    mode: Optional[str] = typer.Option(None, "--mode", help="Override the config's `mode` (embed, value, attn_bias)."),
    all_modes: bool = typer.Option(False, "--all-modes", help="Measure every application mode side by side."),
    prompt: str = typer.Option("describe the image", "--prompt", help="Text after the image placeholder."),
    peak_tile: int = typer.Option(0, "--peak-tile", help="Tile made heavy in the peaked pattern."),
    ratio: float = typer.Option(10.0, "--ratio", help="How many times heavier the peak tile is than each other tile."),
) -> None:
    """How far the next-token distribution moves when the tile weights go from uniform to peaked.

    A KL divergence or logit change near zero means this configuration cannot make the weights
    matter, however long it trains.
    """
    from gswa_plugin.cli.visualize import input_errors
    from gswa_plugin.config import resolve_config
    from gswa_plugin.tools.influence import compare_modes

    with reported_errors(), input_errors():
        cfg = resolve_config(config)
        if mode is not None:
            cfg = cfg.replace(mode=mode)
        host, processor = load_host(model)
        inputs = host_inputs(processor, load_image(image), prompt)
        modes = ("embed", "value", "attn_bias") if all_modes else (cfg.mode,)
        results = compare_modes(host, inputs, cfg, modes=modes, peak_tile=peak_tile, ratio=ratio)
    table = Table(title=f"Influence of a peaked weighting (tile {peak_tile} x{ratio:g} the others, mean 1)")
    for col in ("mode", "KL (nats)", "max |logit change|", "logit scale", "top-1 changed"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for r in results:
        table.add_row(
            r.mode, f"{r.kl:.3g}", f"{r.max_logit_change:.3g}", f"{r.logit_scale:.3g}", f"{r.top1_changed:.0%}"
        )
    console.print(table)
