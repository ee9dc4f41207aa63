"""gswa-plugin: GSWA (Global Semantic-guided Weight Allocator) for tiling vision-language models.

Public API::

    import gswa_plugin
    handle = gswa_plugin.enable(model, "gswa.yaml")   # or a dict / GSWAConfig
    model.generate(**inputs)
    gswa_plugin.last_weights(model)                    # per-image tile weights
    gswa_plugin.save(model, "out/gswa")                # GSWA weights + config only
    gswa_plugin.disable(model)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gswa_plugin._version import __version__

# The public names are imported on first use (PEP 562), so that `import gswa_plugin` (and the
# `gswa` command line, which starts with it) does not import torch before a command needs it.
_LAZY: dict[str, str] = {
    "Adapter": "gswa_plugin.adapters._base",
    **dict.fromkeys(("aux_loss", "disable", "enable", "last_weights", "set_budget", "set_tiles", "tiles"), "gswa_plugin.api"),
    **dict.fromkeys(("load", "read_saved", "save"), "gswa_plugin.checkpoint"),
    "GSWAConfig": "gswa_plugin.config",
    **dict.fromkeys(
        (
            "AdapterNotFoundError",
            "AlreadyEnabledError",
            "CheckpointError",
            "ConfigError",
            "DataError",
            "GSWAError",
            "HostNotInstalledError",
            "LayoutError",
            "MissingModuleError",
            "NonFiniteError",
            "NotEnabledError",
            "PluginError",
            "PluginLoadError",
            "RegistrationError",
            "UnsupportedModeError",
            "UnsupportedRequestError",
            "WrongFamilyError",
        ),
        "gswa_plugin.errors",
    ),
    **dict.fromkeys(("GSWAHandle", "get_handle", "is_enabled"), "gswa_plugin.handle"),
    "hookimpl": "gswa_plugin.hookspecs",
    **dict.fromkeys(("TileBatch", "TileLayout"), "gswa_plugin.layout"),
    "GSWAModule": "gswa_plugin.weighting",
}

if TYPE_CHECKING:  # pragma: no cover - what the names are, for type checkers and the API docs
    from gswa_plugin.adapters._base import Adapter
    from gswa_plugin.api import aux_loss, disable, enable, last_weights, set_budget, set_tiles, tiles
    from gswa_plugin.checkpoint import load, read_saved, save
    from gswa_plugin.config import GSWAConfig
    from gswa_plugin.errors import (
        AdapterNotFoundError,
        AlreadyEnabledError,
        CheckpointError,
        ConfigError,
        DataError,
        GSWAError,
        HostNotInstalledError,
        LayoutError,
        MissingModuleError,
        NonFiniteError,
        NotEnabledError,
        PluginError,
        PluginLoadError,
        RegistrationError,
        UnsupportedModeError,
        UnsupportedRequestError,
        WrongFamilyError,
    )
    from gswa_plugin.handle import GSWAHandle, get_handle, is_enabled
    from gswa_plugin.hookspecs import hookimpl
    from gswa_plugin.layout import TileBatch, TileLayout
    from gswa_plugin.weighting import GSWAModule

__all__ = [
    "Adapter",
    "AdapterNotFoundError",
    "AlreadyEnabledError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GSWAConfig",
    "GSWAError",
    "GSWAHandle",
    "GSWAModule",
    "HostNotInstalledError",
    "LayoutError",
    "MissingModuleError",
    "NonFiniteError",
    "NotEnabledError",
    "PluginError",
    "PluginLoadError",
    "RegistrationError",
    "TileBatch",
    "TileLayout",
    "UnsupportedModeError",
    "UnsupportedRequestError",
    "WrongFamilyError",
    "__version__",
    "aux_loss",
    "disable",
    "enable",
    "get_handle",
    "hookimpl",
    "is_enabled",
    "last_weights",
    "load",
    "read_saved",
    "save",
    "set_budget",
    "set_tiles",
    "tiles",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
