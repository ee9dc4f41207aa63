"""The ``gswa`` command line.

Each module of this package adds its commands to :data:`app` with ``@app.command()``; every
module here is imported when the CLI starts, so a new command is a new file.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="gswa",
    help="GSWA (Global Semantic-guided Weight Allocator) for tiling vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:  # pragma: no cover - console entry point
    app()
