"""Saving and loading GSWA's own weights and config, apart from the host's checkpoint.

``save`` writes ``gswa.safetensors`` (GSWA's tensors only) and ``gswa_config.yaml`` (the config
and metadata: adapter, variant, summary width, dtype, ``format_version``); ``load`` enables GSWA
on a model from such a directory and checks that it fits.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from gswa_plugin._version import __version__
from gswa_plugin.api import disable, enable, find_adapter
from gswa_plugin.config import GSWAConfig, resolve_config
from gswa_plugin.errors import AdapterNotFoundError, CheckpointError
from gswa_plugin.handle import GSWAHandle, get_handle, is_enabled

WEIGHTS_FILE = "gswa.safetensors"
CONFIG_FILE = "gswa_config.yaml"
FORMAT_VERSION = 1


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

