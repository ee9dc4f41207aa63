"""``gswa adapters``, ``gswa check``, ``gswa schema``, ``gswa version``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from gswa_plugin._version import __version__
from gswa_plugin.cli import app
from gswa_plugin.cli._common import console, err_console, reported_errors
from gswa_plugin.config import GSWAConfig
from gswa_plugin.errors import ConfigError
from gswa_plugin.plugins import adapter_sources, adapters, check_config, variant_sources


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
        cfg = check_config(config, source=str(config))
    except ConfigError as exc:
        err_console.print(f"[bold red]{exc}[/]", highlight=False)
        raise typer.Exit(code=1) from exc
    console.print(f"[green]ok[/] {config}: variant={cfg.variant} mode={cfg.mode} adapter={cfg.adapter or 'auto'}")


class SchemaKind(str, Enum):
    """The settings files ``gswa schema`` describes."""

    config = "config"
    declaration = "declaration"
    recipe = "recipe"


@app.command("schema")
def schema_cmd(
    kind: SchemaKind = typer.Argument(
        SchemaKind.config,
        help="config: a YAML file with a `gswa:` block; declaration: a `declare:` block; recipe: a `gswa train` recipe.",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the schema to this file instead of stdout."),
) -> None:
    """Print the JSON Schema of a settings file, for editors that complete and check YAML.

    With the YAML language server (VS Code's YAML extension and others), put
    `# yaml-language-server: $schema=gswa.schema.json` on the first line of the file.
    """
    import json

    from gswa_plugin.schema import json_schema

    with reported_errors():
        if kind is SchemaKind.config:
            schema = json_schema(GSWAConfig, block="gswa")
        elif kind is SchemaKind.declaration:
            from gswa_plugin.config import HostDeclaration

            schema = json_schema(HostDeclaration)
        else:
            from gswa_plugin.integrations.transformers.config import TrainConfig

            schema = json_schema(TrainConfig)
    text = json.dumps(schema, indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"[green]wrote[/] {out}")


@app.command("version")
def version_cmd() -> None:
    """Print the installed gswa-plugin version."""
    console.print(__version__)
