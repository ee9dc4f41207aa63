"""The public Python API: ``enable``, ``disable``, ``last_weights``, ``set_tiles``, ``tiles``, ``set_budget``.

GSWA's parameters live in a submodule named ``gswa`` attached to the model, so they move with
``model.to()``, appear in ``model.state_dict()`` under the ``gswa.`` prefix, and are saved by
``save_pretrained``. The adapter patches the host's seam on this model instance only. Saving and
loading GSWA's own weights is in [`gswa_plugin.checkpoint`][gswa_plugin.checkpoint].
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import yaml
from torch import nn

from gswa_plugin import apply
from gswa_plugin.adapters import _budget
from gswa_plugin.adapters._base import patch_method
from gswa_plugin.adapters._text import install_text_capture, text_dim
from gswa_plugin.config import BudgetSpec, GSWAConfig
from gswa_plugin.errors import (
    AdapterNotFoundError,
    AlreadyEnabledError,
    MissingModuleError,
    NotEnabledError,
    PluginError,
    SeamNotRunError,
)
from gswa_plugin.handle import HANDLE_ATTR, MODULE_ATTR, GSWAHandle, attach, detach, get_handle, is_enabled
from gswa_plugin.plugins import (
    BUILTIN_PLUGINS,
    CheckedHooks,
    adapters,
    check_config,
    get_plugin_manager,
    variant_sources,
    variants,
)
from gswa_plugin.weighting import GSWAModule


def find_adapter(model: nn.Module, name: str | None = None) -> Any:
    """The adapter named ``name``, or the first registered adapter that matches ``model``."""
    registry = adapters()
    if name is not None:
        if name not in registry:
            raise AdapterNotFoundError(
                f"no adapter named '{name}'; registered adapters: {', '.join(registry) or 'none'}"
            )
        return registry[name]
    for adapter in registry.values():
        if adapter.auto_match and adapter.matches(model):
            return adapter
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    raise AdapterNotFoundError(
        f"no registered adapter matches {type(model).__name__} (model_type={mtype!r}). "
        f"Registered adapters: {', '.join(registry) or 'none'}. Name one with `adapter:` in the gswa block "
        "if the model is a variant of a supported family, or describe its seam declaratively "
        "(see the docs page 'Adapters'), or write a plugin implementing `gswa_register_adapters`."
    )


def enable(model: nn.Module, config: GSWAConfig | dict[str, Any] | str | os.PathLike[str] | None = None) -> GSWAHandle:
    """Enable GSWA on ``model``.

    Args:
        model: a host model (see ``gswa adapters`` for the supported families).
        config: a [`GSWAConfig`][gswa_plugin.config.GSWAConfig], a dict (the ``gswa:`` block or a dict holding one), a
            path to a YAML file with a top-level ``gswa:`` block, or ``None`` for the defaults.

    Returns:
        The handle linking model, adapter and GSWA module.

    Raises:
        AlreadyEnabledError: GSWA is already enabled on this model.
        AdapterNotFoundError: no adapter matches the model.
        MissingModuleError: the model lacks a module the adapter needs, or its weights are not
            loaded yet (on the meta device).
        ConfigError: the config is invalid.
    """
    if is_enabled(model):
        raise AlreadyEnabledError(
            f"GSWA is already enabled on this {type(model).__name__}; call `gswa_plugin.disable(model)` "
            "first to change its configuration, or use the handle returned by the first `enable()`"
        )
    cfg = check_config(config)  # the config's own problems and the registry's, all at once
    adapter = find_adapter(model, cfg.adapter)
    adapter.check(model)
    ref = adapter.reference_parameter(model)
    if ref.device.type == "meta":
        raise MissingModuleError(
            f"the weights of this {type(model).__name__} are on the meta device (not loaded yet: built under "
            "`torch.device('meta')` or `init_empty_weights()`, or `enable()` called while `from_pretrained` builds "
            "the model); GSWA's parameters would then be filled by the host's `_init_weights`, not by GSWA's "
            "identity initialisation, and the model would answer differently. Enable GSWA once the weights are "
            "loaded: `gswa_plugin.enable(model)` after `from_pretrained`, or `from_pretrained_with_gswa(path)`"
        )
    registry = variants()
    summary_dim = adapter.summary_dim(model, cfg)
    # GSWA's initial parameters come from their own generator: the host's random stream, and so
    # anything created after enable(), is the same with or without GSWA.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        module = GSWAModule(summary_dim, cfg, _build_variant(registry[cfg.variant], summary_dim, cfg, model))
    module.to(device=ref.device, dtype=ref.dtype)
    handle = GSWAHandle(model, cfg, adapter, module, hook=CheckedHooks(get_plugin_manager()))
    model.add_module(MODULE_ATTR, module)
    handle.add_undo(lambda: delattr(model, MODULE_ATTR))
    try:
        install(model, handle)
    except BaseException:
        handle.undo_all()
        raise
    attach(model, handle)
    return handle


#: GSWA's config beside ``save_pretrained``'s files (the name ``gswa_plugin.checkpoint`` uses).
PRETRAINED_CONFIG_FILE = "gswa_config.yaml"


def install(model: nn.Module, handle: GSWAHandle) -> None:
    """Patch ``model`` for ``handle`` (the adapter's seam, the mode's hooks, ``deepcopy`` and
    ``save_pretrained``); every step registers its undo on the handle, after a mark that
    [`GSWAHandle.uninstall`][gswa_plugin.handle.GSWAHandle.uninstall] returns to."""
    handle.mark_installed()
    handle.adapter.install(model, handle)
    if getattr(handle.module, "uses_text", False):
        install_text_capture(model, handle)
    _install_seam_watch(model, handle)
    apply.install(model, handle)
    _budget.install(model, handle)  # outermost: shortens the call before everything else sees it
    _install_deepcopy(model, handle)
    if callable(getattr(model, "save_pretrained", None)):
        handle.add_undo(patch_method(model, "save_pretrained", _saving_config(handle)))


def _carries_images(kwargs: dict[str, Any]) -> bool:
    for key in ("pixel_values", "images"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.numel() > 0:
            return True
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return True
    return False


def _install_seam_watch(model: nn.Module, handle: GSWAHandle) -> None:
    """No silent no-op: the first call of the model (``forward`` or ``generate``) that carries
    images must have GSWA run on them (``handle.process``); else
    [`SeamNotRunError`][gswa_plugin.errors.SeamNotRunError] with the adapter's fix. After one
    call has passed, the watch stays silent (it costs one dict lookup per call)."""
    def calls() -> int:
        return handle.state.get("process_calls", 0)

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if handle._distinct_weight and module.training:
            handle.state["model_calls"] = handle.state.get("model_calls", 0) + 1  # tells the aux terms' calls apart
        if not handle.seam_verified and not handle.state.get("seam_watch_generate"):
            handle.state["seam_watch_start"] = calls()

    def post_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if handle.seam_verified or not _carries_images(kwargs):
            return
        if calls() > handle.state.get("seam_watch_start", calls()):
            handle.seam_verified = True
            return
        raise SeamNotRunError(handle.adapter.seam_not_run(handle))

    h1 = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    h2 = model.register_forward_hook(post_hook, with_kwargs=True)
    handle.add_undo(h1.remove)
    handle.add_undo(h2.remove)
    if not callable(getattr(model, "generate", None)):
        return

    def make_generate(original: Any) -> Any:
        def generate(*args: Any, **kwargs: Any) -> Any:
            # generate() may encode the images before its first forward step: count from here.
            outer = handle.state.get("seam_watch_generate", False)
            if not outer:
                handle.state["seam_watch_start"] = calls()
            handle.state["seam_watch_generate"] = True
            try:
                out = original(*args, **kwargs)
            finally:
                handle.state["seam_watch_generate"] = outer
            # generate() may hand its forward steps the encoded images instead of pixel values.
            if not outer and not handle.seam_verified and _carries_images(kwargs):
                if calls() == handle.state.get("seam_watch_start", calls()):
                    raise SeamNotRunError(handle.adapter.seam_not_run(handle))
                handle.seam_verified = True
            return out

        return generate

    handle.add_undo(patch_method(model, "generate", make_generate))


def _install_deepcopy(model: nn.Module, handle: GSWAHandle) -> None:
    """``copy.deepcopy(model)`` gives a copy with its own GSWA: the seam patches and hooks are
    closures bound to this model, so they are taken off while the plain model (``model.gswa``
    included) is copied, then installed again here and, for the copy's own module, on the copy."""

    def deepcopy(memo: dict[int, Any]) -> nn.Module:
        handle.uninstall()
        saved = {key: model.__dict__.pop(key) for key in ("__deepcopy__", HANDLE_ATTR) if key in model.__dict__}
        try:
            clone = copy.deepcopy(model, memo)
        finally:
            model.__dict__.update(saved)
            install(model, handle)
        twin = GSWAHandle(clone, handle.config.model_copy(), handle.adapter, getattr(clone, MODULE_ATTR), handle.hook)
        twin.views_override = handle.views_override
        twin.add_undo(lambda: delattr(clone, MODULE_ATTR))
        install(clone, twin)
        attach(clone, twin)
        return clone

    object.__setattr__(model, "__deepcopy__", deepcopy)
    handle.add_undo(lambda: object.__delattr__(model, "__deepcopy__"))


def _saving_config(handle: GSWAHandle) -> Any:
    """A ``save_pretrained`` wrapper that also writes GSWA's config beside the weights (which
    already hold the ``gswa.*`` tensors), so that ``from_pretrained_with_gswa(path)`` restores
    every setting, not only the sizes."""

    def make(original: Any) -> Any:
        def save_pretrained(save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
            result = original(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", True):
                cfg = handle.config.replace(adapter=handle.adapter.name).to_dict()
                text = yaml.safe_dump({"gswa": cfg}, sort_keys=False)
                target = Path(save_directory) / PRETRAINED_CONFIG_FILE
                tmp = target.with_name(target.name + ".tmp")
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, target)  # written whole or not at all
            return result

        return save_pretrained

    return make


def _build_variant(factory: Any, summary_dim: int, cfg: GSWAConfig, model: nn.Module | None = None) -> nn.Module:
    """The variant's module; a third-party factory that raises or returns no module is named.

    A factory marked ``needs_text`` (the question-aware variants) also gets ``text_dim``, the
    width of the host's input embeddings."""
    extra: dict[str, Any] = {}
    if getattr(factory, "needs_text", False):
        extra["text_dim"] = text_dim(model)
    source = variant_sources().get(cfg.variant, "?")
    if source in BUILTIN_PLUGINS:
        return factory(summary_dim, cfg, **extra)
    try:
        scorer = factory(summary_dim, cfg, **extra)
    except Exception as exc:
        raise PluginError(
            f"the factory of variant '{cfg.variant}' (plugin '{source}') raised {type(exc).__name__}: {exc}; "
            "fix the plugin, or pick another `variant`",
            source,
            "gswa_register_variants",
        ) from exc
    if not isinstance(scorer, nn.Module):
        raise PluginError(
            f"the factory of variant '{cfg.variant}' (plugin '{source}') returned a {type(scorer).__name__}, not an "
            "nn.Module; `factory(summary_dim, config)` must return the module whose forward gives the logits",
            source,
            "gswa_register_variants",
        )
    return scorer


def disable(model: nn.Module) -> None:
    """Remove GSWA from ``model``: the seam is unpatched and ``model.gswa`` removed, so the model
    behaves exactly as before ``enable()``."""
    handle = get_handle(model)
    handle.undo_all()
    detach(model)


def last_weights(model: nn.Module) -> list[torch.Tensor]:
    """Per image of the most recent forward, the weights of its tiles (thumbnail excluded),
    in the host's tile order. An image with a single view has one weight, 1.

    The most recent forward is the calling thread's (when several threads call one model, each
    reads its own), else the latest of any thread."""
    handle = get_handle(model)
    if handle.last_batch is None:
        raise NotEnabledError("GSWA has not seen a forward with images yet on this model")
    return handle.last_batch.tile_weights()


def aux_loss(model: nn.Module) -> torch.Tensor:
    """GSWA's own training terms of the forwards since the last call (then cleared): add it to the
    task loss before ``backward()``.

    Today the one term is the distinctiveness term (``distinct_weight`` times
    [`distinct_term`][gswa_plugin.weighting.distinct_term]); its gradient reaches GSWA's
    parameters only. A 0-dim zero on GSWA's device when there is none (``distinct_weight: 0``,
    evaluation mode, ``torch.no_grad()``). The terms are kept per thread. If a training forward
    adds a term while the previous call's was never collected, a ``UserWarning`` says so (once)
    and the stale term is dropped.

    ```python
    loss = model(**batch).loss + gswa_plugin.aux_loss(model)
    loss.backward()
    ```
    """
    handle = get_handle(model)
    term = handle.pop_aux()
    if term is not None:
        return term
    ref = next(handle.module.parameters(), None)
    return torch.zeros((), device=ref.device if ref is not None else None)


def set_tiles(model: nn.Module, views_per_image: Sequence[int] | None) -> None:
    """Tell GSWA how many views (tiles plus thumbnail) each image has, for hosts that cannot
    infer it (e.g. called with ``inputs_embeds``). ``None`` returns to inference from the inputs."""
    get_handle(model).views_override = None if views_per_image is None else tuple(int(v) for v in views_per_image)


@contextlib.contextmanager
def tiles(model: nn.Module, views_per_image: Sequence[int]) -> Iterator[None]:
    """Context manager form of [`set_tiles`][gswa_plugin.api.set_tiles]."""
    handle = get_handle(model)
    before = handle.views_override
    set_tiles(model, views_per_image)
    try:
        yield
    finally:
        handle.views_override = before


def set_budget(model: nn.Module, budget: BudgetSpec | dict[str, Any] | float | int | None) -> GSWAHandle:
    """Set, change or remove (``None``) the token budget of a model with GSWA enabled.

    The same as enabling with a ``budget:`` block (see the docs page 'Token budget'); GSWA's
    parameters are kept. ``keep: 1.0`` (or ``None``) leaves no budget machinery installed.

    Args:
        model: a model with GSWA enabled.
        budget: a [`BudgetSpec`][gswa_plugin.config.BudgetSpec], its dict (``{"keep": 0.25, "method":
            "globalcom"}``), a bare ``keep`` value, or ``None``.

    Returns:
        The model's handle (its ``config.budget`` updated).

    Raises:
        ConfigError: the budget is invalid, or the model's adapter does not support one.
    """
    handle = get_handle(model)
    if isinstance(budget, BudgetSpec):
        budget = budget.model_dump()
    elif isinstance(budget, (int, float)) and not isinstance(budget, bool):
        budget = {"keep": budget}
    old = handle.config
    new = old.replace(budget=budget)
    handle.uninstall()
    handle.config = new
    try:
        install(model, handle)
    except BaseException:
        handle.uninstall()
        handle.config = old
        install(model, handle)
        raise
    return handle
