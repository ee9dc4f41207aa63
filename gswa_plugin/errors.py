"""Every error the package raises.

Each class subclasses [`GSWAError`][gswa_plugin.errors.GSWAError] and, where it makes sense, a builtin exception
(``ValueError``, ``LookupError``, ``RuntimeError``, ``ImportError``) so that existing
``except ValueError`` code keeps working. The troubleshooting page of the docs lists each one
with its cause and fix.
"""

from __future__ import annotations


class GSWAError(Exception):
    """Base class of every error raised by gswa-plugin."""


class ConfigError(GSWAError, ValueError):
    """A GSWA configuration is invalid.

    All problems found are reported at once; ``problems`` holds one line per problem.
    """

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid GSWA configuration{where} ({len(self.problems)} problem(s)):\n{lines}")


class AdapterNotFoundError(GSWAError, LookupError):
    """No registered adapter matches the model (or the adapter named in the config is unknown)."""


class MissingModuleError(GSWAError, AttributeError):
    """The model matches an adapter by type but lacks a module or method the adapter needs."""


class AlreadyEnabledError(GSWAError, RuntimeError):
    """``enable()`` was called on a model that already has GSWA enabled."""


class NotEnabledError(GSWAError, RuntimeError):
    """An operation needs GSWA enabled on the model, and it is not."""


class LayoutError(GSWAError, ValueError):
    """The tiles that reached the seam cannot be split into images as the host laid them out."""


class SeamNotRunError(LayoutError):
    """A forward carried images but GSWA never ran on them (the adapter's seam was not on the
    host's code path), or the layout it read is implausible: GSWA would be a silent no-op."""


class CheckpointError(GSWAError, ValueError):
    """A saved GSWA checkpoint is missing, unreadable, or does not fit the model."""


class PluginLoadError(GSWAError, ImportError):
    """A plugin that was asked for could not be found or failed to load."""


class RegistrationError(GSWAError, ValueError):
    """A plugin registered an adapter or variant wrongly (duplicate name, wrong type)."""


class PluginError(GSWAError, RuntimeError):
    """A plugin's hook raised, or returned a batch GSWA cannot use (weights missing or not finite).

    The message names the plugin and the hook; ``plugin`` and ``hook`` hold them, and the
    plugin's own exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, plugin: str | None = None, hook: str | None = None):
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook


class NonFiniteError(GSWAError, ValueError):
    """A number that must be finite is NaN or infinite: the tile weights a variant computed, or
    the vision encoder's summaries they come from. The message names the variant (and the plugin
    that registered it) or the input."""


class UnsupportedModeError(GSWAError, ValueError):
    """The application mode asked for cannot work with this host (adapter or attention kernel)."""


class DataError(GSWAError, ValueError):
    """A training data file is malformed, or a record in it is unusable (e.g. a missing image).

    The message names the file and line (or record) and the fix.
    """


class HostNotInstalledError(GSWAError, ImportError):
    """A host framework integration was used but the framework is not installed; the message names
    the extra (``pip install gswa-plugin[...]``) or the install command."""


class UnsupportedRequestError(GSWAError, RuntimeError):
    """lmms-eval asked a gswa model for a request type it does not answer."""


class WrongFamilyError(GSWAError, ValueError):
    """The checkpoint given to a ``gswa_<family>`` lmms-eval model belongs to another family."""
