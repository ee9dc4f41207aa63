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

__version__ = "0.1.0"

from .adapters._base import Adapter  # noqa: E402
from .api import (  # noqa: E402
    GSWAHandle,
    disable,
    enable,
    get_handle,
    is_enabled,
    last_weights,
    load,
    save,
    set_tiles,
    tiles,
)
from .config import GSWAConfig  # noqa: E402
from .core import GSWAModule, TileBatch, TileLayout  # noqa: E402
from .errors import (  # noqa: E402
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
)
from .hookspecs import hookimpl  # noqa: E402

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
    "__version__",
    "disable",
    "enable",
    "get_handle",
    "hookimpl",
    "is_enabled",
    "last_weights",
    "load",
    "save",
    "set_tiles",
    "tiles",
]
