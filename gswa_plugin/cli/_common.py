"""Helpers shared by the CLI commands: error reporting and console output."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer
from rich.console import Console

from gswa_plugin.errors import GSWAError

#: Help of every ``--model`` option: the host names built in code are ``gswa_plugin.tools.hosts.TINY_HOSTS``.
MODEL_HELP = (
    "Checkpoint directory (save_pretrained) or cached hub id, or a host built in code (random weights, no "
    "download): tiny (InternVL, the default), tiny-llava-next, tiny-llava-onevision, tiny-idefics3, "
    "tiny-smolvlm, tiny-aya-vision."
)

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a ``GSWAError`` into a red message on stderr and exit code 2 (no traceback)."""
    try:
        yield
    except GSWAError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(code=2) from exc
