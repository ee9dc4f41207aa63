"""``gswa adapters``, ``gswa check``, ``gswa schema``, ``gswa version``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from gswa_plugin._version import __version__
from gswa_plugin.cli import _catalog, app
from gswa_plugin.cli._common import console, err_console, reported_errors
from gswa_plugin.errors import ConfigError, GSWAError

# The plugin registries import torch and every adapter (over a second): these commands read
# the built-in table (gswa_plugin.cli._catalog) instead where no third-party plugin loads.


@app.command("adapters")
def adapters_cmd() -> None:
    """List the registered host adapters and weighting variants (built-in and third-party)."""
    rows: list[tuple[str, str, str, str, str]] = []  # name, registered by, thumbnail, summary, hosts
    missing: list[_catalog.AdapterInfo] = []
    if _catalog.builtin_only():
        for info in _catalog.BUILTIN_ADAPTERS:
            if not info.available():
                missing.append(info)
                continue
            rows.append(
                (info.name, info.module, info.global_position, "cls" if info.has_cls else "mean", info.description)
            )
        vrows = [(v, _catalog.BUILTIN_VARIANT_SOURCE) for v in _catalog.BUILTIN_VARIANTS]
    else:
        from gswa_plugin.plugins import adapter_sources, adapters, variant_sources

        with reported_errors():
            registry, sources, vsources = adapters(), adapter_sources(), variant_sources()
        for name, adapter in registry.items():
            summary = "cls" if adapter.has_cls else "mean"
            rows.append((name, sources[name], adapter.global_position, summary, adapter.description))
        missing = [i for i in _catalog.BUILTIN_ADAPTERS if i.name not in registry and not i.available()]
        vrows = list(vsources.items())
    _print_rows("Adapters", ("name", "registered by", "thumbnail", "summary", "hosts"), rows)
    _print_rows("Weighting variants", ("name", "registered by"), vrows)
    if missing:
        console.print("Not available here (host package missing):", highlight=False)
        for info in missing:
            console.print(f"  {info.name}: needs: {info.install}", highlight=False, markup=False, soft_wrap=True)


def _print_rows(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table where it fits the terminal, else one block per row: names are never cut."""
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    widths = [max([len(col)] + [len(r[i]) for r in rows]) for i, col in enumerate(columns)]
    fixed = sum(widths[:-1]) + 3 * len(columns) + 1  # borders and padding
    if len(columns) == 2 or fixed + min(widths[-1], 30) <= console.width:
        table = Table(title=title)
        for i, col in enumerate(columns):
            last = i == len(columns) - 1 and len(columns) > 2
            table.add_column(col, no_wrap=not last, min_width=None if last else widths[i], overflow="fold")
        for r in rows:
            table.add_row(*r)
        console.print(table)
        return
    console.print(f"[bold]{title}[/]")
    for r in rows:
        details = ", ".join(f"{c} {v}" for c, v in zip(columns[1:-1], r[1:-1]))
        console.print(f"  [bold]{r[0]}[/]  {details}", highlight=False, soft_wrap=True)
        console.print(Padding(Text(r[-1]), (0, 0, 0, 6)))


@app.command("check")
def check_cmd(
    config: Path = typer.Argument(..., help="YAML file with a top-level `gswa:` block."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="Also run the adapter contract as a dry run on this model (a local checkpoint, a cached hub id, or a "
        "host built in code such as `tiny-aya-vision`): what holds and what does not.",
    ),
    image: Optional[list[str]] = typer.Option(
        None,
        "--image",
        help="With --model: two images the processor cuts into different numbers of views (files or scikit-image "
        "samples; default: astronaut and a wide crop of coffee).",
    ),
) -> None:
    """Validate a GSWA config file; exits non-zero listing every problem. With ``--model``, also
    run the adapter contract on that model (``gswa_plugin.testing.check_model``)."""
    cfg = None
    if _catalog.builtin_only():
        from gswa_plugin.config import resolve_config

        try:  # the common case without torch; any problem takes the full path for the whole list
            cfg = resolve_config(config)
        except ConfigError:
            cfg = None
        else:
            names = [i.name for i in _catalog.BUILTIN_ADAPTERS if i.available()]
            if cfg.variant not in _catalog.BUILTIN_VARIANTS or (cfg.adapter and cfg.adapter not in names):
                cfg = None
    if cfg is None:
        from gswa_plugin.plugins import check_config

        try:
            cfg = check_config(config, source=str(config))
        except GSWAError as exc:  # a config problem, or a plugin that fails to load: named, no traceback
            err_console.print(f"[bold red]{exc}[/]", highlight=False)
            raise typer.Exit(code=1) from exc
    console.print(f"[green]ok[/] {config}: variant={cfg.variant} mode={cfg.mode} adapter={cfg.adapter or 'auto'}")
    if model is not None:
        _dry_run(cfg, model, image)


def _dry_run(cfg: Any, model: str, images: Optional[list[str]]) -> None:
    """``gswa check --model``: the adapter contract on the user's model, printed; exit 1 on a failure."""
    from gswa_plugin.cli.influence import load_host, load_image
    from gswa_plugin.testing import check_model

    if images and len(images) != 2:
        err_console.print(f"[bold red]--image must be given twice (two images), got {len(images)}[/]")
        raise typer.Exit(code=1)
    if images:
        pictures = [load_image(i) for i in images]
    else:
        pictures = [load_image("astronaut"), load_image("coffee").resize((300, 100))]
    try:
        host, processor = load_host(model)
        block = cfg.to_dict()
        report = check_model(host, processor, pictures, config={k: v for k, v in block.items() if v is not None})
    except GSWAError as exc:
        err_console.print(f"[bold red]{exc}[/]", highlight=False)
        raise typer.Exit(code=1) from exc
    console.print(str(report), highlight=False, soft_wrap=True)
    if not report.passed:
        raise typer.Exit(code=1)


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
            from gswa_plugin.config import GSWAConfig

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
