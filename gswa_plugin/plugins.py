"""The plugin manager: built-in plugins, third-party discovery, and the registries built from hooks.

Built-in adapters and variants are plugins like any other, listed in :data:`BUILTIN_PLUGINS`
and registered through the same hooks a third party uses. Third-party plugins are found through
the entry-point group ``gswa``. The environment variable ``GSWA_PLUGINS`` limits which of them
load: unset loads all installed ones, a comma-separated list loads only those names, and an
empty value loads none. A plugin that was asked for and fails to load raises
:class:`~gswa_plugin.errors.PluginLoadError`.
"""

from __future__ import annotations

import difflib
import importlib
import os
from importlib.metadata import entry_points
from typing import Any

import pluggy

from gswa_plugin import hookspecs
from gswa_plugin.config import BLOCK_KEY, GSWAConfig, read_yaml, resolve_config
from gswa_plugin.errors import ConfigError, PluginLoadError, RegistrationError

#: Entry-point group third-party plugins are published under.
ENTRY_POINT_GROUP = "gswa"
#: Environment variable limiting which third-party plugins load.
PLUGINS_ENV = "GSWA_PLUGINS"

#: Modules registered on every plugin manager, in order.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "gswa_plugin.builtin",
    "gswa_plugin.adapters.internvl",
    "gswa_plugin.adapters.idefics3",
    "gswa_plugin.adapters.aya_vision",
    "gswa_plugin.adapters.llava_next",
    "gswa_plugin.adapters.llava_onevision",
    "gswa_plugin.adapters.internvl_chat",
    "gswa_plugin.adapters.declarative",
    "gswa_plugin.adapters.llava_torch",
)

_manager: pluggy.PluginManager | None = None


def _selected_names() -> set[str] | None:
    raw = os.environ.get(PLUGINS_ENV)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    selected = _selected_names()
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if selected is not None:
        missing = sorted(selected - set(found))
        if missing:
            installed = ", ".join(sorted(found)) or "none"
            raise PluginLoadError(
                f"{PLUGINS_ENV} asks for plugin(s) {', '.join(missing)} but no such entry point is installed "
                f"in group '{ENTRY_POINT_GROUP}' (installed: {installed}); install the plugin's package or "
                f"fix {PLUGINS_ENV}"
            )
    for name, ep in sorted(found.items()):
        if selected is not None and name not in selected:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any failure of a requested plugin is the user's to see
            raise PluginLoadError(
                f"plugin '{name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall it, or leave it out with {PLUGINS_ENV}=<names to load>"
            ) from exc
        try:
            pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginLoadError(f"plugin '{name}' ({ep.value}) is not a valid gswa plugin: {exc}") from exc


def make_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with the hook specs, the built-in plugins and (optionally) third-party ones."""
    pm = pluggy.PluginManager("gswa")
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    if load_entry_points:
        _load_entry_points(pm)
    pm.check_pending()
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (created on first use)."""
    global _manager
    if _manager is None:
        _manager = make_plugin_manager()
    return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager so the next use rebuilds it (tests, ``GSWA_PLUGINS`` changes)."""
    global _manager
    _manager = None
    _registry_cache.clear()


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object or module on the process-wide manager at run time."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    pm.check_pending()


def unregister_plugin(plugin: Any = None, name: str | None = None) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    get_plugin_manager().unregister(plugin, name=name)


#: Registries built from the registration hooks, per plugin manager and set of registered plugins.
_registry_cache: dict[tuple[str, int, frozenset[int]], list[tuple[str, Any, str]]] = {}


def _collect(hook_name: str) -> list[tuple[str, Any, str]]:
    """The items registered through ``hook_name``: (name, object, plugin name), in registration order.

    Built once per plugin manager and set of registered plugins (registering or unregistering a
    plugin rebuilds it); the registration hooks are not called again on every lookup.
    """
    pm = get_plugin_manager()
    key = (hook_name, id(pm), frozenset(id(p) for p in pm.get_plugins()))
    if key not in _registry_cache:
        if len(_registry_cache) > 64:  # plugin sets change only in tests and plugin development
            _registry_cache.clear()
        _registry_cache[key] = _build_registry(pm, hook_name)
    return _registry_cache[key]


def _build_registry(pm: pluggy.PluginManager, hook_name: str) -> list[tuple[str, Any, str]]:
    """Call a registration hook plugin by plugin (in registration order) so that each registered
    item is attributed to its plugin."""
    out: list[tuple[str, Any, str]] = []
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        items: list[tuple[str, Any]] = []
        if hook_name == "gswa_register_adapters":

            def register(adapter: Any, _items: list = items) -> None:
                from gswa_plugin.adapters._base import Adapter

                if not isinstance(adapter, Adapter):
                    raise RegistrationError(
                        f"gswa_register_adapters: expected an Adapter instance, got {type(adapter).__name__}"
                    )
                _items.append((adapter.name, adapter))

        else:

            def register(name: str, factory: Any, _items: list = items) -> None:
                if not isinstance(name, str) or not callable(factory):
                    raise RegistrationError(
                        "gswa_register_variants: register(name, factory) takes a str and a callable, "
                        f"got {type(name).__name__} and {type(factory).__name__}"
                    )
                _items.append((name, factory))

        impl.function(**{k: register for k in impl.argnames})
        out.extend((n, obj, plugin_name) for n, obj in items)
    seen: dict[str, str] = {}
    for name, _, plugin_name in out:
        if name in seen:
            kind = "adapter" if hook_name == "gswa_register_adapters" else "variant"
            raise RegistrationError(
                f"{kind} '{name}' is registered twice: by '{seen[name]}' and by '{plugin_name}'"
            )
        seen[name] = plugin_name
    return out


def adapters() -> dict[str, Any]:
    """Registered adapters by name, in registration order."""
    return {name: obj for name, obj, _ in _collect("gswa_register_adapters")}


def adapter_sources() -> dict[str, str]:
    """Which plugin registered each adapter."""
    return {name: src for name, _, src in _collect("gswa_register_adapters")}


def variants() -> dict[str, Any]:
    """Registered weighting variants (name -> factory)."""
    return {name: obj for name, obj, _ in _collect("gswa_register_variants")}


def variant_sources() -> dict[str, str]:
    return {name: src for name, _, src in _collect("gswa_register_variants")}


def adapter_names() -> list[str]:
    return list(adapters())


def variant_names() -> list[str]:
    return list(variants())


def config_problems(config: Any, where: str = "") -> list[str]:
    """The problems of a config that only the plugin registries can see: a ``variant`` or
    ``adapter`` no installed plugin registers.

    Args:
        config: a :class:`~gswa_plugin.config.GSWAConfig`, or the raw ``gswa:`` mapping (so these
            problems can be listed beside the fields' own even when some fields are invalid).
        where: prefix of the keys in the messages (``gswa.`` inside a recipe).
    """
    problems = []
    for key, names in (("variant", variant_names()), ("adapter", adapter_names())):
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if not isinstance(value, str) or value in names:
            continue
        close = difflib.get_close_matches(value, names, n=1, cutoff=0.5)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        problems.append(
            f"`{where}{key}` must be one of {', '.join(map(repr, names))} (the registered {key}s); got {value!r}{hint}"
        )
    return problems


def check_config(config: Any = None, source: str | None = None) -> GSWAConfig:
    """A valid config whose ``variant`` and ``adapter`` the installed plugins register.

    Called by ``enable()``, ``gswa check``, recipe validation and the host-framework
    integrations, so that a config's own problems and the registry's are reported together.

    Args:
        config: what ``enable()`` accepts: a :class:`~gswa_plugin.config.GSWAConfig`, a dict (the
            ``gswa:`` block or a dict holding one), a path to a YAML file, or ``None``.
        source: where the config came from, named in the error.

    Raises:
        ConfigError: listing every problem at once.
    """
    try:
        cfg = resolve_config(config)
    except ConfigError as exc:
        raise ConfigError(exc.problems + config_problems(_raw_block(config)), exc.source or source) from None
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems, source or (str(config) if isinstance(config, (str, os.PathLike)) else None))
    return cfg


def _raw_block(config: Any) -> dict[str, Any]:
    """The raw ``gswa:`` mapping of what a user passed (empty when it cannot be read)."""
    data = config
    if isinstance(config, (str, os.PathLike)):
        try:
            data = read_yaml(config)
        except ConfigError:
            return {}
    if isinstance(data, dict) and isinstance(data.get(BLOCK_KEY), dict):
        data = data[BLOCK_KEY]
    return data if isinstance(data, dict) else {}
