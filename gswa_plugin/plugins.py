"""The plugin manager: built-in plugins, third-party discovery, and the registries built from hooks.

Built-in adapters and variants are plugins like any other, listed in
[`BUILTIN_PLUGINS`][gswa_plugin.plugins.BUILTIN_PLUGINS]
and registered through the same hooks a third party uses. Third-party plugins are found through
the entry-point group ``gswa``. The environment variable ``GSWA_PLUGINS`` limits which of them
load: unset loads all installed ones, a comma-separated list loads only those names, and an
empty value loads none. A plugin that was asked for and fails to load raises
[`PluginLoadError`][gswa_plugin.errors.PluginLoadError].
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
from collections.abc import Callable, Generator
from importlib.metadata import entry_points
from typing import Any

import pluggy

from gswa_plugin import hookspecs
from gswa_plugin.config import BLOCK_KEY, GSWAConfig, read_yaml, resolve_config
from gswa_plugin.errors import (
    ConfigError,
    GSWAError,
    NonFiniteError,
    PluginError,
    PluginLoadError,
    RegistrationError,
)

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
    "gswa_plugin.adapters.mllama",
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
        _register_checked(pm, plugin, name, f"plugin '{name}' ({ep.value})", installed=True)


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


def _register_checked(pm: pluggy.PluginManager, plugin: Any, name: str | None, what: str, installed: bool) -> None:
    """Register a third-party plugin, check that every hook it implements exists, and guard its
    hooks so that what they raise names the plugin.

    A plugin that fails the check is unregistered again, so the manager stays usable.

    Raises:
        PluginLoadError: a hook name no spec has (with the closest real name), or an argument
            the spec does not have.
    """
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(
            f"{what} is not a valid gswa plugin: {exc}; compare its hooks with the hook reference (docs: Hooks)"
        ) from exc
    except ValueError as exc:  # pluggy: the plugin object or its name is registered already
        raise RegistrationError(
            f"{what} cannot be registered: {str(exc).splitlines()[0]}; unregister the first one (`unregister_plugin`) or pick another name"
        ) from exc
    unknown = unknown_hooks(pm, plugin)
    if unknown:
        pm.unregister(plugin)
        lines = []
        for hook_name in unknown:
            close = difflib.get_close_matches(hook_name, list(hookspecs.HOOK_NAMES), n=1, cutoff=0.6)
            lines.append(f"`{hook_name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
        raise PluginLoadError(
            f"{what} implements {', '.join(lines)}, which no gswa hook is called; the hooks are "
            f"{', '.join(hookspecs.HOOK_NAMES)}. Rename the function (or mark it "
            "`@hookimpl(optionalhook=True)` if it belongs to a later version)"
            + (f", or leave the plugin out with {PLUGINS_ENV}=<names to load>" if installed else "")
        )
    guard_plugin(pm, plugin)


def unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """Names of the hooks ``plugin`` implements (``@hookimpl``, not optional) that no spec declares."""
    out = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.has_spec():
            continue
        if any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()):
            out.append(caller.name)
    return sorted(out)


def guard_plugin(pm: pluggy.PluginManager, plugin: Any) -> None:
    """Wrap every hook implementation of a third-party ``plugin`` so that an exception it raises
    arrives as a [`PluginError`][gswa_plugin.errors.PluginError] naming the plugin and the hook, and
    so that a ``gswa_process_tiles`` implementation returning unusable weights is caught there."""
    plugin_name = pm.get_name(plugin) or repr(plugin)
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not getattr(impl.function, "_gswa_guarded", False):
                impl.function = _guarded(impl.function, plugin_name, caller.name, impl.wrapper or impl.hookwrapper)


def _plugin_error(exc: BaseException, plugin: str, hook: str) -> BaseException:
    """What an exception raised in a plugin's hook becomes: GSWA's own errors (already naming the
    input, e.g. a registration error) and interrupts pass through; anything else names the plugin."""
    if isinstance(exc, GSWAError) or not isinstance(exc, Exception):
        return exc
    err = PluginError(
        f"plugin '{plugin}' raised {type(exc).__name__} in its `{hook}` hook: {exc}. Fix the plugin, or leave it "
        f"out with {PLUGINS_ENV}=<names to load> (an installed plugin) or `unregister_plugin` (one registered in code)",
        plugin=plugin,
        hook=hook,
    )
    err.__cause__ = exc
    return err


def _guarded(fn: Callable[..., Any], plugin: str, hook: str, wrapper: bool) -> Callable[..., Any]:
    if wrapper and inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def guarded_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            try:
                gen = fn(*args, **kwargs)
                first = next(gen)
            except StopIteration:
                raise
            except BaseException as exc:  # noqa: BLE001
                raise _plugin_error(exc, plugin, hook)
            sent = weights_in = None
            try:
                sent = yield first
                weights_in = getattr(sent, "weights", None)
            except BaseException as thrown:  # noqa: BLE001
                try:
                    gen.throw(thrown)
                except StopIteration as stop:
                    result = stop.value
                except BaseException as exc:
                    if exc is thrown:
                        raise
                    raise _plugin_error(exc, plugin, hook)
                else:
                    raise PluginError(f"plugin '{plugin}': its `{hook}` wrapper yielded twice", plugin, hook) from None
            else:
                try:
                    gen.send(sent)
                except StopIteration as stop:
                    result = stop.value
                except BaseException as exc:  # noqa: BLE001
                    raise _plugin_error(exc, plugin, hook)
                else:
                    raise PluginError(f"plugin '{plugin}': its `{hook}` wrapper yielded twice", plugin, hook) from None
            if hook == "gswa_process_tiles" and result is not None:
                unchanged = result is sent and getattr(result, "weights", None) is weights_in
                if not unchanged:  # weights passed through untouched are checked where they were made
                    check_processed(result, plugin=plugin)
            return result

        guarded_wrapper._gswa_guarded = True  # type: ignore[attr-defined]
        return guarded_wrapper

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            raise _plugin_error(exc, plugin, hook)
        if hook == "gswa_process_tiles" and result is not None:
            check_processed(result, plugin=plugin)
        return result

    guarded._gswa_guarded = True  # type: ignore[attr-defined]
    return guarded


def check_processed(batch: Any, handle: Any = None, plugin: str | None = None) -> None:
    """Check the batch a ``gswa_process_tiles`` implementation returned: one finite weight per view.

    Args:
        batch: the returned [`TileBatch`][gswa_plugin.layout.TileBatch].
        handle: the model's handle, for naming the variant when the built-in processing computed
            the weights (``plugin`` is ``None``).
        plugin: the third-party plugin whose implementation returned ``batch``.

    Raises:
        PluginError: a plugin returned something that is not a batch, or a batch without weights
            (GSWA would silently stop weighting), or with a wrong number of them.
        NonFiniteError: a weight is NaN or infinite; the message says whether the vision
            encoder's summaries, GSWA's parameters, or the variant (and its plugin) produced it.
    """
    from gswa_plugin.layout import TileBatch

    hook = "gswa_process_tiles"
    who = f"plugin '{plugin}'" if plugin else "the tile processing"
    if not isinstance(batch, TileBatch):
        raise PluginError(
            f"{who} returned a {type(batch).__name__} from `{hook}`; return the TileBatch it was given (or None "
            "to let the next implementation handle it)",
            plugin,
            hook,
        )
    n = batch.layout.num_views
    w = batch.weights
    if w is None:
        raise PluginError(
            f"{who} returned a batch without weights from `{hook}`, so GSWA would weight nothing; set "
            "`batch.weights` (one weight per view), or return None so that the built-in processing computes them",
            plugin,
            hook,
        )
    if not hasattr(w, "shape") or tuple(w.shape) != (n,):
        raise PluginError(
            f"{who} returned weights of shape {tuple(getattr(w, 'shape', ()))} from `{hook}` but the batch has {n} "
            "views; `batch.weights` holds one weight per view (thumbnails included)",
            plugin,
            hook,
        )
    wd = w.detach()
    # one value read for two facts: 2 = not finite, 1 = finite but not all exactly 1, 0 = all 1
    # (the `attn_bias` mode leaves the host's attention untouched when every weight is 1)
    code = int((~wd.isfinite()).any().byte() * 2 + (wd != 1).any().byte())
    if handle is not None and hasattr(handle, "state"):
        if code == 0:
            handle.state["unit_weights"] = w
        else:
            handle.state.pop("unit_weights", None)
    if code < 2:
        return
    bad = int((~w.detach().isfinite()).sum())
    if plugin is not None:
        raise NonFiniteError(
            f"plugin '{plugin}' returned {bad} non-finite tile weight(s) (NaN or inf) from `{hook}`; "
            "every weight must be a finite number. Fix the plugin, or leave it out"
        )
    raise NonFiniteError(_non_finite_cause(batch, handle, bad))


def _non_finite_cause(batch: Any, handle: Any, bad: int) -> str:
    """Why the built-in processing produced non-finite weights, in words (which input is to blame)."""
    head = f"GSWA computed {bad} non-finite tile weight(s) (NaN or inf)"
    if not bool(batch.summaries.detach().isfinite().all()):
        return (
            f"{head} because the vision encoder's tile summaries reaching GSWA are not finite; check the "
            "pixel values and the host's dtype (e.g. float16 overflow in the vision tower)"
        )
    module = getattr(handle, "module", None)
    if module is not None:
        broken = [n for n, p in module.named_parameters() if not bool(p.detach().isfinite().all())]
        if broken:
            return (
                f"{head} because GSWA's parameters hold NaN or inf ({', '.join(broken[:3])}): training diverged "
                "or a damaged checkpoint was loaded; lower the learning rate, or load a good checkpoint"
            )
    config = getattr(handle, "config", None)
    variant = getattr(config, "variant", None)
    if variant is None:
        return head
    source = variant_sources().get(variant, "?")
    by = "built in" if source in BUILTIN_PLUGINS else f"registered by plugin '{source}'"
    return (
        f"{head}: the variant '{variant}' ({by}) returned logits that are not finite for finite inputs; "
        "fix the variant's forward (or its `temperature`/`cosine_temperature`), or pick another `variant`"
    )


class CheckedHooks:
    """The plugin manager's hook caller, with the batch ``gswa_process_tiles`` returns checked
    (see [`check_processed`][gswa_plugin.plugins.check_processed]) before the host uses it.

    ``enable()`` hands this to the [`GSWAHandle`][gswa_plugin.handle.GSWAHandle] in place of ``pm.hook``.
    """

    def __init__(self, pm: pluggy.PluginManager):
        self._hook = pm.hook

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_hook":  # copy/pickle probes, and before __init__ ran
            raise AttributeError(name)
        return getattr(self._hook, name)

    def __deepcopy__(self, memo: dict[int, Any]) -> CheckedHooks:
        return self  # the hooks are the process's plugin manager's: a copied model shares them

    def __copy__(self) -> CheckedHooks:
        return self

    def gswa_process_tiles(self, batch: Any, handle: Any) -> Any:
        try:
            result = self._hook.gswa_process_tiles(batch=batch, handle=handle)
        except GSWAError:
            raise
        except Exception as exc:  # in the built-in processing: name the variant where a plugin gave it
            variant = getattr(getattr(handle, "config", None), "variant", None)
            source = variant_sources().get(variant, "?") if variant is not None else "?"
            if source in BUILTIN_PLUGINS or source == "?":
                raise
            raise PluginError(
                f"the variant '{variant}' (plugin '{source}') raised {type(exc).__name__} while computing the tile "
                f"weights: {exc}. Its forward(tokens [images, 1 + T, D], tile_mask [images, T]) must return logits "
                "[images, T] or [images, heads, T]; fix the plugin, or pick another `variant`",
                source,
                "gswa_register_variants",
            ) from exc
        if result is not None:
            check_processed(result, handle)
        return result


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
    """Register a plugin object or module on the process-wide manager at run time.

    Raises:
        PluginLoadError: the plugin implements a hook that does not exist (the message gives the
            closest real name) or takes an argument its spec lacks; it is left unregistered.
    """
    pm = get_plugin_manager()
    _register_checked(pm, plugin, name, f"plugin {name or repr(plugin)!r}", installed=False)
    pm.check_pending()


def unregister_plugin(plugin: Any = None, name: str | None = None) -> None:
    """Remove a plugin registered with [`register_plugin`][gswa_plugin.plugins.register_plugin]."""
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

            def register(adapter: Any, _items: list = items, plugin_name: str = plugin_name) -> None:
                from gswa_plugin.adapters._base import Adapter

                if not isinstance(adapter, Adapter):
                    raise RegistrationError(
                        f"gswa_register_adapters: expected an Adapter instance, got {type(adapter).__name__} "
                        f"(plugin '{plugin_name}'); register an instance of a subclass of gswa_plugin.Adapter"
                    )
                _items.append((adapter.name, adapter))

        else:

            def register(name: str, factory: Any, _items: list = items, plugin_name: str = plugin_name) -> None:
                if not isinstance(name, str) or not callable(factory):
                    raise RegistrationError(
                        "gswa_register_variants: register(name, factory) takes a str and a callable, "
                        f"got {type(name).__name__} and {type(factory).__name__} (plugin '{plugin_name}')"
                    )
                _items.append((name, factory))

        impl.function(**{k: register for k in impl.argnames})
        out.extend((n, obj, plugin_name) for n, obj in items)
    seen: dict[str, str] = {}
    for name, _, plugin_name in out:
        if name in seen:
            kind = "adapter" if hook_name == "gswa_register_adapters" else "variant"
            raise RegistrationError(f"{kind} '{name}' is registered twice: by '{seen[name]}' and by '{plugin_name}'")
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
    ``adapter`` no installed plugin registers, or an installed plugin that fails to load (one
    line naming it, so ``gswa check`` and ``enable()`` report it with the config's problems).

    Args:
        config: a [`GSWAConfig`][gswa_plugin.config.GSWAConfig], or the raw ``gswa:`` mapping (so these
            problems can be listed beside the fields' own even when some fields are invalid).
        where: prefix of the keys in the messages (``gswa.`` inside a recipe).
    """
    problems = []
    try:
        registries = (("variant", variant_names()), ("adapter", adapter_names()))
    except (PluginLoadError, RegistrationError) as exc:  # a broken plugin: a clear line, not a traceback
        return [f"`{where}variant` and `{where}adapter` cannot be checked because a plugin is broken: {exc}"]
    for key, names in registries:
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
        config: what ``enable()`` accepts: a [`GSWAConfig`][gswa_plugin.config.GSWAConfig], a dict (the
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
