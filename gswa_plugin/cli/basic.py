"""``gswa adapters``, ``gswa check``, ``gswa version``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from gswa_plugin import __version__
from gswa_plugin.cli import app
from gswa_plugin.cli._common import console, err_console, reported_errors
from gswa_plugin.config import GSWAConfig
from gswa_plugin.errors import ConfigError
from gswa_plugin.plugins import adapter_sources, adapters, variant_sources


@app.command("adapters")
def adapters_cmd() -> None:
    """List the registered host adapters and weighting variants (built-in and third-party)."""
    with reported_errors():
        registry, sources = adapters(), adapter_sources()
        vsources = variant_sources()
    table = Table(title="Adapters")
    for col in ("name", "registered by", "thumbnail", "summary", "hosts"):
        table.add_column(col)
    for name, adapter in registry.items():
        table.add_row(
            name, sources[name], adapter.global_position, "cls" if adapter.has_cls else "mean", adapter.description
        )
    console.print(table)
    vt = Table(title="Weighting variants")
    vt.add_column("name")
    vt.add_column("registered by")
    for name, src in vsources.items():
        vt.add_row(name, src)
    console.print(vt)


@app.command("check")
def check_cmd(config: Path = typer.Argument(..., help="YAML file with a top-level `gswa:` block.")) -> None:
    """Validate a GSWA config file; exits non-zero listing every problem."""
    try:
        cfg = GSWAConfig.from_yaml(config)
    except ConfigError as exc:
        err_console.print(f"[bold red]{exc}[/]", highlight=False)
        raise typer.Exit(code=1) from exc
    console.print(f"[green]ok[/] {config}: variant={cfg.variant} mode={cfg.mode} adapter={cfg.adapter or 'auto'}")


@app.command("version")
def version_cmd() -> None:
    """Print the installed gswa-plugin version."""
    console.print(__version__)
