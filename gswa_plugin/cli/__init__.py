"""The ``gswa`` command line.

Each module of this package adds its commands to ``app`` with ``@app.command()``; every
module here is imported when the CLI starts, so a new command is a new file.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

_display_type_rich = typer.core.TyperOption.display_type_rich


def _no_type_for_flags(self: typer.core.TyperOption, ctx: typer.Context) -> str | None:
    """Flags (``--help``, ``--check``, ``--fail``) take no value: show no ``<bool>`` type after them."""
    return None if self.is_flag and not self.count else _display_type_rich(self, ctx)


typer.core.TyperOption.display_type_rich = _no_type_for_flags  # type: ignore[method-assign]

app = typer.Typer(
    name="gswa",
    help="GSWA (Global Semantic-guided Weight Allocator) for tiling vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # docstrings are Markdown: a paragraph's line breaks are not kept (no line ends mid-sentence)
    rich_markup_mode="markdown",
)

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:  # pragma: no cover - console entry point
    app()
