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

from gswa_plugin._version import __version__
from gswa_plugin.adapters._base import Adapter
from gswa_plugin.api import disable, enable, last_weights, set_tiles, tiles
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
    NotEnabledError,
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
    "NotEnabledError",
    "PluginLoadError",
    "RegistrationError",
    "TileBatch",
    "TileLayout",
    "UnsupportedModeError",
    "UnsupportedRequestError",
    "WrongFamilyError",
    "__version__",
    "disable",
    "enable",
    "get_handle",
    "hookimpl",
    "is_enabled",
    "last_weights",
    "load",
    "read_saved",
    "save",
    "set_tiles",
    "tiles",
]
