"""Host adapters, one module per host family. :class:`Adapter` is the base class."""

from gswa_plugin.adapters._base import Adapter, patch_method, resolve_path, runs_of_token, summarise

__all__ = ["Adapter", "patch_method", "resolve_path", "runs_of_token", "summarise"]
