"""Saving and loading GSWA's own weights and config, apart from the host's checkpoint.

``save`` writes ``gswa.safetensors`` (GSWA's tensors only, with a SHA-256 of their bytes) and
``gswa_config.yaml`` (the config and metadata: adapter, variant, summary width, dtype,
``format_version``); ``load`` enables GSWA on a model from such a directory and checks that it fits.

Both directions check before they act: ``save`` checks that the tensors fit the module and are
finite, then writes each file under a temporary name and renames it, so a good checkpoint is never
replaced by a bad or half-written one; ``load`` reads and checks the whole directory (format
version, metadata, readable file, checksum, finite tensors, names and shapes) before it touches
the model, and a failure leaves the model exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
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
#: Metadata key of ``gswa.safetensors`` holding the SHA-256 of the tensors' bytes.
CHECKSUM_KEY = "sha256"


# --- helpers shared with the trainer integration -----------------------------------------------
def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(temporary_path)``, then rename it into place.

    The temporary file sits in the same directory (so the rename is atomic) and is removed if
    ``write`` fails; an existing ``path`` is replaced only by a completely written file.
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final


def state_checksum(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``state``'s tensors (in name order)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def non_finite(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold NaN or inf."""
    return [
        k
        for k, t in state.items()
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t.detach()).all())
    ]


def fit_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """How ``state`` differs from ``expected`` (missing and unexpected names, other shapes, non-finite values)."""
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(
            f"missing {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    for k in sorted(set(state) & set(expected)):
        if tuple(state[k].shape) != tuple(expected[k].shape):
            problems.append(f"{k} has shape {tuple(state[k].shape)}, the module's is {tuple(expected[k].shape)}")
    bad = non_finite(state)
    if bad:
        problems.append(f"NaN or inf in {', '.join(bad[:5])}")
    return problems


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a ``gswa.safetensors`` file, checked: readable, checksum (where the file has
    one) and finite values.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    p = Path(path)
    try:
        state = load_file(str(p))
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{p} is not a readable safetensors file ({exc}); it is truncated or damaged: restore it from a copy, "
            "or save GSWA again (`gswa_plugin.save`)"
        ) from exc
    want = meta.get(CHECKSUM_KEY)
    if want is not None and state_checksum(state) != want:
        raise CheckpointError(
            f"{p} is damaged: its tensors do not match the checksum written with them ({CHECKSUM_KEY}); restore it "
            "from a copy, or save GSWA again"
        )
    bad = non_finite(state)
    if bad:
        raise CheckpointError(
            f"{p} holds NaN or inf in {', '.join(bad[:5])}: the file is damaged or the training that wrote it "
            "diverged; use an earlier checkpoint"
        )
    return state


# --- save ------------------------------------------------------------------------------------------
def save(
    model: nn.Module, directory: str | os.PathLike[str], state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write only GSWA's weights (``gswa.safetensors``) and its config (``gswa_config.yaml``).

    ``state_dict`` (keys as in ``model.gswa.state_dict()``) replaces the module's own tensors, for
    trainer integrations that hold GSWA's parameters gathered from a sharded model. The tensors
    are checked (names, shapes, finite values) before anything is written, and each file is
    written under a temporary name and renamed, so a failed save never damages an earlier one.

    Raises:
        CheckpointError: ``state_dict`` does not fit the module, or a tensor is NaN or inf.
    """
    handle = get_handle(model)
    out = Path(directory)
    own = handle.module.state_dict()
    source = own if state_dict is None else state_dict
    problems = fit_problems(source, own)
    if problems and state_dict is None:  # only non-finite values can be wrong with the module's own tensors
        raise CheckpointError(
            f"not saving to {out}: GSWA's parameters hold NaN or inf ({', '.join(non_finite(own)[:5])}), so the "
            "training diverged; nothing was written. Lower the learning rate and resume from an earlier checkpoint"
        )
    if problems:
        raise CheckpointError(
            f"not saving to {out}: the state_dict given to save() does not fit the enabled GSWA "
            f"({'; '.join(problems)}); nothing was written. Pass the tensors of `model.gswa.state_dict()` (keys "
            "without the `gswa.` prefix)"
        )
    state = {k: v.detach().contiguous().cpu() for k, v in source.items()}
    meta = {
        "adapter": handle.adapter.name,
        "variant": handle.config.variant,
        "summary_dim": handle.module.summary_dim,
        "dtype": str(next(iter(state.values())).dtype).replace("torch.", "") if state else "none",
        "format_version": FORMAT_VERSION,
        "gswa_plugin_version": __version__,
    }
    tensor_meta = {k: str(v) for k, v in meta.items()}
    tensor_meta[CHECKSUM_KEY] = state_checksum(state)
    cfg = handle.config.replace(adapter=handle.adapter.name).to_dict()
    text = yaml.safe_dump({"gswa": cfg, "saved": meta}, sort_keys=False)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"not saving to {out}: it is a file; give a directory (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata=tensor_meta))
    atomic_write(out / CONFIG_FILE, lambda p: p.write_text(text, encoding="utf-8"))
    return out


# --- load ------------------------------------------------------------------------------------------
def read_saved(directory: str | os.PathLike[str]) -> tuple[GSWAConfig, dict[str, Any]]:
    """The config and metadata of a saved GSWA directory (metadata checked: ``format_version``,
    ``summary_dim``).

    Raises:
        CheckpointError: the directory lacks a file, the YAML does not parse, or the metadata is
            invalid or from a newer format.
        ConfigError: the saved ``gswa:`` block is invalid (naming the file).
    """
    d = Path(directory)
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    if not d.is_dir() or not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(
            f"{d} is not a saved GSWA directory: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(written by `gswa_plugin.save(model, directory)`)"
        )
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{cfg_path} is not valid YAML ({exc}); it is damaged: restore it from a copy or save GSWA again"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("saved", {}), dict):
        raise CheckpointError(
            f"{cfg_path} must hold a mapping with a `gswa:` block and a `saved:` block (as `gswa_plugin.save` "
            "writes it); restore it from a copy or save GSWA again"
        )
    meta = dict(data.get("saved") or {})
    version = meta.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(
            f"{cfg_path}: `saved.format_version` must be a whole number >= 1, got {version!r}; the file was edited "
            "by hand: restore it from a copy or save GSWA again"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: `saved.format_version` is {version} but this gswa-plugin ({__version__}) reads format "
            f"{FORMAT_VERSION} and older; upgrade gswa-plugin (the checkpoint was written by "
            f"{meta.get('gswa_plugin_version', 'a newer version')})"
        )
    dim = meta.get("summary_dim")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise CheckpointError(
            f"{cfg_path}: `saved.summary_dim` must be a whole number >= 1 (the width of the summaries GSWA was "
            f"built for), got {dim!r}; restore the file from a copy or save GSWA again"
        )
    return GSWAConfig.from_dict(data, source=str(cfg_path)), meta


def load(
    model: nn.Module,
    directory: str | os.PathLike[str],
    config: GSWAConfig | dict[str, Any] | str | os.PathLike[str] | None = None,
) -> GSWAHandle:
    """Enable GSWA on ``model`` from a directory written by [`save`][gswa_plugin.checkpoint.save] and load its weights.

    If GSWA is already enabled on the model, the weights are loaded into it. ``config`` may
    override settings that do not change the parameters (e.g. ``temperature``, ``mode``): only the
    settings it sets explicitly apply, every other one keeps the value the checkpoint was saved
    with (a dict or YAML file naming only ``temperature`` changes only that). Everything is
    read and checked before the model is touched; if anything does not fit, the model is left
    exactly as it was (not enabled, or enabled with its previous weights).

    Raises:
        CheckpointError: the directory is not a saved GSWA, a file is damaged (unreadable,
            checksum, NaN or inf), or its adapter, variant or sizes differ from the model's; the
            message names the file and says what differs.
    """
    saved_cfg, meta = read_saved(directory)
    state = read_weights(Path(directory) / WEIGHTS_FILE)
    if config is not None:
        override = resolve_config(config)
        # only the settings the override sets explicitly count: its unset fields hold defaults, which
        # must neither be compared with the checkpoint nor replace what the checkpoint was saved with
        given = override.model_fields_set
        diffs = [
            f"{key}: checkpoint has {getattr(saved_cfg, key)!r}, config asks for {getattr(override, key)!r}"
            for key in ("adapter", "variant", "hidden_size", "num_layers", "num_heads", "mlp_ratio")
            if key in given and getattr(override, key) is not None and getattr(override, key) != getattr(saved_cfg, key)
        ]
        if diffs:
            raise CheckpointError(f"the GSWA checkpoint in {directory} does not fit the config: " + "; ".join(diffs))
        wanted = override.to_dict()
        saved_cfg = saved_cfg.replace(**{key: wanted[key] for key in given if key != "adapter"})
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
            raise CheckpointError(
                f"the GSWA checkpoint in {directory} does not fit the enabled GSWA: " + "; ".join(diffs)
            )
        _load_checked(handle, state, meta, directory)
        return handle
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
    try:
        _load_checked(handle, state, meta, directory)
    except BaseException:
        disable(model)  # back to the model as it was before load()
        raise
    return handle


def _load_checked(handle: GSWAHandle, state: dict[str, torch.Tensor], meta: dict[str, Any], directory: Any) -> None:
    """Copy ``state`` into the handle's module once its width, names and shapes are known to fit
    (so that a failure leaves the module's weights as they were)."""
    want_dim = meta.get("summary_dim", handle.module.summary_dim)
    if want_dim != handle.module.summary_dim:
        raise CheckpointError(
            f"hidden sizes differ: the GSWA checkpoint in {directory} takes summaries of width {want_dim} "
            f"but this model's vision encoder gives {handle.module.summary_dim}"
        )
    problems = fit_problems(state, handle.module.state_dict())
    if problems:
        raise CheckpointError(f"the GSWA weights in {directory} do not fit the module: {'; '.join(problems)}")
    handle.module.load_state_dict(state, strict=True)
