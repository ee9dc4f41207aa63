"""Host adapters, one module per host family. [`Adapter`][gswa_plugin.adapters._base.Adapter] is the base class."""

from gswa_plugin.adapters._base import Adapter, patch_method, resolve_path, summarise
from gswa_plugin.adapters._layout import token_runs

__all__ = ["Adapter", "patch_method", "resolve_path", "summarise", "token_runs"]
