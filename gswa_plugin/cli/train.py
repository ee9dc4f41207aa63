"""``gswa train RECIPE.yaml [key=value ...]``: run a training recipe with transformers' Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from gswa_plugin.cli import app
from gswa_plugin.cli._common import console, reported_errors


@app.command("train", context_settings={"allow_extra_args": False})
def train_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML (`host: transformers`)."),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Dotted key=value overrides, e.g. training_args.max_steps=10."
    ),
    resume: Optional[str] = typer.Option(
        None, help="Resume: a checkpoint directory, or `latest` for the newest checkpoint in output_dir."
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Check the recipe and what it names on this machine (model, data files, every image decoded, "
        "precision, launcher packages, output folder, checkpoint to resume), list every problem, and exit.",
    ),
) -> None:
    """Train GSWA (and what the recipe's freezing policy names) with transformers' Trainer.

    One process here; for several GPUs or nodes run the same recipe with
    `accelerate launch --config_file ACCELERATE.yaml -m gswa_plugin.cli train RECIPE.yaml KEY=VALUE...`.
    """
    from gswa_plugin.integrations.transformers.config import load_recipe

    resume_arg: str | bool | None = True if resume == "latest" else resume
    with reported_errors():
        cfg = load_recipe(recipe, overrides or [])
        if check:
            from gswa_plugin.integrations.transformers.preflight import describe, preflight

            with console.status("checking the model, the data and every image..."):
                report = preflight(cfg, resume_arg, decode_images=True)
            for note in report.notes:
                console.print(f"[yellow]note:[/] {note}", highlight=False)
            report.raise_if_failed(str(recipe))
            console.print(
                f"[green]ok[/] {recipe}: freeze={cfg.freeze} variant={cfg.gswa_config().variant} "
                f"output_dir={cfg.training_args.get('output_dir')}; {describe(report)}",
                highlight=False,
            )
            return
        import logging

        from gswa_plugin.integrations.transformers.run import train

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        train(cfg, resume_arg, source=str(recipe))
