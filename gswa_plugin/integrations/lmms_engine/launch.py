"""Run lmms-engine's CLI with GSWA registered.

Usage (same arguments as ``python -m lmms_engine.launch.cli``)::

    python -m gswa_plugin.integrations.lmms_engine.launch config_yaml=train.yaml
    torchrun --nproc_per_node 8 -m gswa_plugin.integrations.lmms_engine.launch config_yaml=train.yaml

The YAML's GSWA settings are validated before anything is built (every problem reported at
once); then GSWA is registered with lmms-engine
([`gswa_plugin.integrations.lmms_engine.register`][gswa_plugin.integrations.lmms_engine.register])
and lmms-engine's own Hydra entry point runs unchanged.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Sequence

import yaml

from gswa_plugin.errors import ConfigError
from gswa_plugin.integrations.lmms_engine import (
    GSWAPatchFailed,
    gswa_settings,
    lmms_engine_module,
    model_type_of,
    register,
)


def config_yaml_path(argv: Sequence[str]) -> Path | None:
    """The ``config_yaml=<path>`` Hydra override among the arguments, if any."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key == "config_yaml" and value:
            return Path(value)
    return None


def prepare(argv: Sequence[str]) -> None:
    """Validate the YAML's GSWA settings and register GSWA with lmms-engine."""
    path = config_yaml_path(argv)
    model_types: list[str] = []
    if path is not None:
        if not path.is_file():
            raise ConfigError([f"config_yaml: file not found: {path}"], str(path))
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        try:
            gswa_settings(config)
        except ConfigError as exc:
            raise ConfigError(exc.problems, str(path)) from None
        model_type = model_type_of(config)
        if model_type:
            model_types.append(model_type)
    register(model_types)


def main(argv: Sequence[str] | None = None) -> None:
    """Validate, register, then run lmms-engine's CLI module (Hydra reads ``sys.argv``)."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    prepare(sys.argv[1:])
    lmms_engine_module("lmms_engine.launch.cli")
    try:
        # Run the CLI as `python -m lmms_engine.launch.cli` does: Hydra then finds lmms-engine's
        # config folder by file path (as a package it lacks an __init__.py and is not found).
        runpy.run_module("lmms_engine.launch.cli", run_name="__main__", alter_sys=True)
    except GSWAPatchFailed as failed:
        raise failed.error from None


if __name__ == "__main__":
    main()
