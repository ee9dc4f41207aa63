"""The public Python API: ``enable``, ``disable``, ``last_weights``, ``save``, ``load``.

GSWA's parameters live in a submodule named ``gswa`` attached to the model, so they move with
``model.to()``, appear in ``model.state_dict()`` under the ``gswa.`` prefix, and are saved by
``save_pretrained``. The adapter patches the host's seam on this model instance only.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__, modes
from .config import GSWAConfig, resolve_config
from .core import GSWAModule, TileBatch, TileLayout
from .errors import (
    AdapterNotFoundError,
    AlreadyEnabledError,
    CheckpointError,
    ConfigError,
    LayoutError,
    NotEnabledError,
)
from .plugins import adapters, get_plugin_manager, variants

#: Attribute of the model holding GSWA's parameters (hence the ``gswa.`` prefix of their names).
MODULE_ATTR = "gswa"
_HANDLE_ATTR = "_gswa_handle"
WEIGHTS_FILE = "gswa.safetensors"
CONFIG_FILE = "gswa_config.yaml"
FORMAT_VERSION = 1


class GSWAHandle:
    """What ``enable()`` returns: the link between a model, its adapter and its GSWA module.

    Attributes:
        model: the host model.
        config: the :class:`~gswa_plugin.config.GSWAConfig` in force.
        adapter: the :class:`~gswa_plugin.adapters.Adapter` patching the host.
        module: the :class:`~gswa_plugin.core.GSWAModule` (also ``model.gswa``).
        last_batch: the processed :class:`~gswa_plugin.core.TileBatch` of the latest forward.
    """

    def __init__(self, model: nn.Module, config: GSWAConfig, adapter: Any, module: GSWAModule):
        self.model = model
        self.config = config
        self.adapter = adapter
        self.module = module
        self.last_batch: TileBatch | None = None
        self.state: dict[str, Any] = {}  # per-forward scratch space for the adapter
        self.views_override: tuple[int, ...] | None = None
        self._undo: list[Callable[[], None]] = []

    def add_undo(self, fn: Callable[[], None]) -> None:
        """Register a step that ``disable()`` runs (in reverse order of registration)."""
        self._undo.append(fn)

    def process(self, features: torch.Tensor, summaries: torch.Tensor, layout: TileLayout, **extra: Any) -> torch.Tensor:
        """Run the ``gswa_process_tiles`` hook on one forward's tiles; returns the weighted features."""
        batch = TileBatch(features=features, summaries=summaries, layout=layout, extra=dict(extra))
        pm = get_plugin_manager()
        result = pm.hook.gswa_process_tiles(batch=batch, handle=self)
        if result is None:
            raise RuntimeError("no gswa_process_tiles implementation returned a batch")  # pragma: no cover
        self.last_batch = result
        pm.hook.gswa_weights_computed(weights=result.tile_weights(), batch=result, handle=self)
        return result.features

    def layout_for(self, n_views: int, counts_from_ids: Sequence[int] | None) -> TileLayout:
        """The layout of ``n_views`` views: an explicit ``set_tiles()`` override, else counts the
        adapter read off ``input_ids``, else a single image with a single view."""
        source = "set_tiles()"
        counts = self.views_override
        if counts is None and counts_from_ids is not None:
            counts, source = tuple(int(c) for c in counts_from_ids), "the image tokens in input_ids"
        if counts is None:
            if n_views == 1:
                counts = (1,)
            else:
                raise LayoutError(
                    f"{n_views} tiles reached the '{self.adapter.name}' seam but GSWA cannot tell how they "
                    "split into images: call the model with `input_ids` (so the image tokens can be counted) "
                    "or say it with `gswa_plugin.set_tiles(model, [tiles of image 1, tiles of image 2, ...])`"
                )
        if sum(counts) != n_views:
            raise LayoutError(
                f"{source} describe{'s' if source.startswith('set') else ''} {sum(counts)} tiles "
                f"({list(counts)} per image) but {n_views} reached the '{self.adapter.name}' seam; "
                "check the processor's tiling or the counts given to `gswa_plugin.set_tiles`"
            )
        return TileLayout(tuple(counts), self.adapter.global_position)


def get_handle(model: nn.Module) -> GSWAHandle:
    """The handle of a model with GSWA enabled."""
    handle = getattr(model, _HANDLE_ATTR, None)
    if handle is None:
        raise NotEnabledError(
            f"GSWA is not enabled on this {type(model).__name__}; call `gswa_plugin.enable(model, config)` first"
        )
    return handle


def is_enabled(model: nn.Module) -> bool:
    return getattr(model, _HANDLE_ATTR, None) is not None


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
    cfg = resolve_config(config)
    adapter = find_adapter(model, cfg.adapter)
    adapter.check(model)
    registry = variants()
    if cfg.variant not in registry:  # a plugin providing it may have been unloaded since validation
        raise ConfigError([f"`variant` must be one of {', '.join(map(repr, registry))}; got {cfg.variant!r}"])
    summary_dim = adapter.summary_dim(model, cfg)
    # GSWA's initial parameters come from their own generator: the host's random stream, and so
    # anything created after enable(), is the same with or without GSWA.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        module = GSWAModule(summary_dim, cfg, registry[cfg.variant](summary_dim, cfg))
    ref = adapter.reference_parameter(model)
    module.to(device=ref.device, dtype=ref.dtype)
    handle = GSWAHandle(model, cfg, adapter, module)
    model.add_module(MODULE_ATTR, module)
    handle.add_undo(lambda: delattr(model, MODULE_ATTR))
    try:
        adapter.install(model, handle)
        modes.install(model, handle)
    except BaseException:
        _run_undo(handle)
        raise
    object.__setattr__(model, _HANDLE_ATTR, handle)
    return handle


def _run_undo(handle: GSWAHandle) -> None:
    while handle._undo:
        handle._undo.pop()()


def disable(model: nn.Module) -> None:
    """Remove GSWA from ``model``: the seam is unpatched and ``model.gswa`` removed, so the model
    behaves exactly as before ``enable()``."""
    handle = get_handle(model)
    _run_undo(handle)
    object.__delattr__(model, _HANDLE_ATTR)


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


# --- save / load -------------------------------------------------------------------------
def save(
    model: nn.Module, directory: str | os.PathLike[str], state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write only GSWA's weights (``gswa.safetensors``) and its config (``gswa_config.yaml``).

    ``state_dict`` (keys as in ``model.gswa.state_dict()``) replaces the module's own tensors, for
    trainer integrations that hold GSWA's parameters gathered from a sharded model.
    """
    handle = get_handle(model)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    source = handle.module.state_dict() if state_dict is None else state_dict
    state = {k: v.detach().contiguous().cpu() for k, v in source.items()}
    meta = {
        "adapter": handle.adapter.name,
        "variant": handle.config.variant,
        "summary_dim": handle.module.summary_dim,
        "dtype": str(next(iter(state.values())).dtype).replace("torch.", "") if state else "none",
        "format_version": FORMAT_VERSION,
        "gswa_plugin_version": __version__,
    }
    save_file(state, str(out / WEIGHTS_FILE), metadata={k: str(v) for k, v in meta.items()})
    cfg = handle.config.replace(adapter=handle.adapter.name).to_dict()
    (out / CONFIG_FILE).write_text(
        yaml.safe_dump({"gswa": cfg, "saved": meta}, sort_keys=False), encoding="utf-8"
    )
    return out


def read_saved(directory: str | os.PathLike[str]) -> tuple[GSWAConfig, dict[str, Any]]:
    """The config and metadata of a saved GSWA directory."""
    d = Path(directory)
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    if not d.is_dir() or not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(
            f"{d} is not a saved GSWA directory: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(written by `gswa_plugin.save(model, directory)`)"
        )
    data = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    return GSWAConfig.from_dict(data, source=str(cfg_path)), dict(data.get("saved") or {})


def load(
    model: nn.Module,
    directory: str | os.PathLike[str],
    config: GSWAConfig | dict[str, Any] | str | os.PathLike[str] | None = None,
) -> GSWAHandle:
    """Enable GSWA on ``model`` from a directory written by :func:`save` and load its weights.

    If GSWA is already enabled on the model, the weights are loaded into it. ``config`` may
    override settings that do not change the parameters (e.g. ``temperature``).

    Raises:
        CheckpointError: the directory is not a saved GSWA, or its adapter, variant or sizes
            differ from the model's; the message says what differs.
    """
    saved_cfg, meta = read_saved(directory)
    if config is not None:
        override = resolve_config(config)
        diffs = [
            f"{key}: checkpoint has {getattr(saved_cfg, key)!r}, config asks for {getattr(override, key)!r}"
            for key in ("adapter", "variant", "hidden_size", "num_layers", "num_heads", "mlp_ratio")
            if getattr(override, key) is not None and getattr(override, key) != getattr(saved_cfg, key)
        ]
        if diffs:
            raise CheckpointError(f"the GSWA checkpoint in {directory} does not fit the config: " + "; ".join(diffs))
        saved_cfg = override.replace(adapter=saved_cfg.adapter)
    if is_enabled(model):
        handle = get_handle(model)
        diffs = [
            f"{key}: checkpoint has {getattr(saved_cfg, key)!r}, model has {getattr(handle.config, key)!r}"
            for key in ("variant", "hidden_size", "num_layers", "num_heads", "mlp_ratio")
            if getattr(handle.config, key) != getattr(saved_cfg, key)
        ]
        if handle.adapter.name != saved_cfg.adapter:
            diffs.insert(0, f"adapter: checkpoint has {saved_cfg.adapter!r}, model uses {handle.adapter.name!r}")
        if diffs:
            raise CheckpointError(f"the GSWA checkpoint in {directory} does not fit the enabled GSWA: " + "; ".join(diffs))
        enabled_here = False
    else:
        adapter = find_adapter(model, saved_cfg.adapter)
        if not adapter.matches(model):
            auto = None
            with contextlib.suppress(AdapterNotFoundError):
                auto = find_adapter(model).name
            raise CheckpointError(
                f"the GSWA checkpoint in {directory} was saved for the '{saved_cfg.adapter}' adapter but this "
                f"{type(model).__name__} is handled by {repr(auto) if auto else 'no registered adapter'}"
            )
        handle = enable(model, saved_cfg)
        enabled_here = True
    want_dim = int(meta.get("summary_dim", handle.module.summary_dim))
    if want_dim != handle.module.summary_dim:
        if enabled_here:
            disable(model)
        raise CheckpointError(
            f"hidden sizes differ: the GSWA checkpoint in {directory} takes summaries of width {want_dim} "
            f"but this model's vision encoder gives {handle.module.summary_dim}"
        )
    state = load_file(str(Path(directory) / WEIGHTS_FILE))
    try:
        handle.module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        if enabled_here:
            disable(model)
        raise CheckpointError(f"the GSWA weights in {directory} do not fit the module: {exc}") from exc
    return handle
