"""The public Python API: ``enable``, ``disable``, ``last_weights``, ``set_tiles``, ``tiles``.

GSWA's parameters live in a submodule named ``gswa`` attached to the model, so they move with
``model.to()``, appear in ``model.state_dict()`` under the ``gswa.`` prefix, and are saved by
``save_pretrained``. The adapter patches the host's seam on this model instance only. Saving and
loading GSWA's own weights is in :mod:`gswa_plugin.checkpoint`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from gswa_plugin import apply
from gswa_plugin.config import GSWAConfig
from gswa_plugin.errors import AdapterNotFoundError, AlreadyEnabledError, NotEnabledError
from gswa_plugin.handle import MODULE_ATTR, GSWAHandle, attach, detach, get_handle, is_enabled
from gswa_plugin.plugins import adapters, check_config, get_plugin_manager, variants
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
        config: a :class:`GSWAConfig`, a dict (the ``gswa:`` block or a dict holding one), a
            path to a YAML file with a top-level ``gswa:`` block, or ``None`` for the defaults.

    Returns:
        The :class:`GSWAHandle` linking model, adapter and GSWA module.

    Raises:
        AlreadyEnabledError: GSWA is already enabled on this model.
        AdapterNotFoundError: no adapter matches the model.
        MissingModuleError: the model lacks a module the adapter needs.
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
    registry = variants()
    summary_dim = adapter.summary_dim(model, cfg)
    # GSWA's initial parameters come from their own generator: the host's random stream, and so
    # anything created after enable(), is the same with or without GSWA.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        module = GSWAModule(summary_dim, cfg, registry[cfg.variant](summary_dim, cfg))
    ref = adapter.reference_parameter(model)
    module.to(device=ref.device, dtype=ref.dtype)
    handle = GSWAHandle(model, cfg, adapter, module, hook=get_plugin_manager().hook)
    model.add_module(MODULE_ATTR, module)
    handle.add_undo(lambda: delattr(model, MODULE_ATTR))
    try:
        adapter.install(model, handle)
        apply.install(model, handle)
    except BaseException:
        handle.undo_all()
        raise
    attach(model, handle)
    return handle


def disable(model: nn.Module) -> None:
    """Remove GSWA from ``model``: the seam is unpatched and ``model.gswa`` removed, so the model
    behaves exactly as before ``enable()``."""
    handle = get_handle(model)
    handle.undo_all()
    detach(model)


def last_weights(model: nn.Module) -> list[torch.Tensor]:
    """Per image of the most recent forward, the weights of its tiles (thumbnail excluded),
    in the host's tile order. An image with a single view has one weight, 1."""
    handle = get_handle(model)
    if handle.last_batch is None:
        raise NotEnabledError("GSWA has not seen a forward with images yet on this model")
    return handle.last_batch.tile_weights()


def set_tiles(model: nn.Module, views_per_image: Sequence[int] | None) -> None:
    """Tell GSWA how many views (tiles plus thumbnail) each image has, for hosts that cannot
    infer it (e.g. called with ``inputs_embeds``). ``None`` returns to inference from the inputs."""
    get_handle(model).views_override = None if views_per_image is None else tuple(int(v) for v in views_per_image)


@contextlib.contextmanager
def tiles(model: nn.Module, views_per_image: Sequence[int]) -> Iterator[None]:
    """Context manager form of :func:`set_tiles`."""
    handle = get_handle(model)
    before = handle.views_override
    set_tiles(model, views_per_image)
    try:
        yield
    finally:
        handle.views_override = before

