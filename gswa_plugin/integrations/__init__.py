"""Host framework integrations: GSWA inside training and evaluation frameworks, apart from the core.

Each integration plugs into its framework's own extension points and ships a launcher, so a
team adds GSWA with a few lines in the YAML or launch arguments it already uses:

* [`gswa_plugin.integrations.transformers`][gswa_plugin.integrations.transformers]: transformers' ``Trainer`` with
  accelerate,
  DeepSpeed, FSDP and PEFT (``pip install gswa-plugin[train]``); ``gswa train <recipe>``.
* ``gswa_plugin.integrations.lmms_eval``: the ``gswa_*`` models of lmms-eval
  (``pip install gswa-plugin[eval]``), found through the ``lmms_eval.models`` entry point.
* [`gswa_plugin.integrations.lmms_engine`][gswa_plugin.integrations.lmms_engine]: lmms-engine (``pip install
  gswa-plugin[lmms-engine]``);
  ``python -m gswa_plugin.integrations.lmms_engine.launch config_yaml=<yaml>``.
* [`gswa_plugin.integrations.llava`][gswa_plugin.integrations.llava]: the llava training code (LLaVA / LLaVA-NeXT);
  ``python -m gswa_plugin.integrations.llava.train --gswa_config <yaml> <llava arguments>``.

The integrations import their framework lazily; a missing framework raises
[`HostNotInstalledError`][gswa_plugin.errors.HostNotInstalledError] naming what to install. This module holds
what they share: [`unwrap`][gswa_plugin.integrations.unwrap] (the one way to find the GSWA model under any wrapper) and
writing GSWA's weights into a host checkpoint.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from gswa_plugin.checkpoint import save
from gswa_plugin.errors import HostNotInstalledError
from gswa_plugin.handle import MODULE_ATTR, get_handle, is_enabled

#: Folder name GSWA's weights and config get inside a host checkpoint directory.
CHECKPOINT_SUBDIR = "gswa"


def require(module: str, install: str, what: str) -> Any:
    """Import ``module`` or raise [`HostNotInstalledError`][gswa_plugin.errors.HostNotInstalledError] saying how to
    install ``what``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HostNotInstalledError(
            f"the {what} integration needs the `{module.split('.')[0]}` package, which is not importable "
            f"({type(exc).__name__}: {exc}); install it with `{install}`"
        ) from exc


def unwrap(model: nn.Module) -> nn.Module:
    """The module GSWA is enabled on, found under any wrapper.

    Distributed and compiled wrappers (DDP, FSDP, DeepSpeed, ``torch.compile``) are removed by
    accelerate's ``extract_model_from_parallel`` (every trainer here runs on accelerate), then
    PEFT's ``get_base_model``; a trainer's own wrapper is searched for an enabled submodule.
    PEFT forwards attribute lookups to the model it wraps, so ``is_enabled`` is asked only after
    unwrapping.
    """
    try:
        from accelerate.utils import extract_model_from_parallel
    except ImportError:  # plain inference without accelerate: no distributed wrapper to remove
        pass
    else:
        model = extract_model_from_parallel(model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    if is_enabled(model):
        return model
    return next((m for m in model.modules() if is_enabled(m)), model)


def gswa_state_from(state_dict: dict[str, torch.Tensor] | None, model: nn.Module) -> dict[str, torch.Tensor]:
    """GSWA's tensors keyed as in ``model.gswa.state_dict()``.

    From a full ``state_dict`` a trainer gathered (keys ``<any prefix>.gswa.<name>``), or else
    from the module itself, gathering sharded (FSDP2 ``DTensor``) parameters; that gather is a
    collective, so every rank must call this.
    """
    if state_dict is not None:
        out = {}
        for key, value in state_dict.items():
            parts = key.split(".")
            if MODULE_ATTR in parts[:-1]:
                out[".".join(parts[parts.index(MODULE_ATTR) + 1 :])] = value
        if out:
            return out
    module = get_handle(unwrap(model)).module
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in module.state_dict().items()}


def save_into_checkpoint(
    model: nn.Module, checkpoint_dir: str, state_dict: dict[str, torch.Tensor] | None = None, write: bool = True
) -> None:
    """Write ``gswa_plugin.save`` output to ``<checkpoint_dir>/gswa`` (a no-op without GSWA).

    Args:
        model: the (possibly wrapped) model a trainer holds.
        checkpoint_dir: the host's checkpoint folder.
        state_dict: a full state dict the trainer already gathered, if any.
        write: False on ranks that only take part in gathering.
    """
    inner = unwrap(model)
    if not is_enabled(inner):
        return
    state = gswa_state_from(state_dict, model)
    if write:
        save(inner, f"{checkpoint_dir}/{CHECKPOINT_SUBDIR}", state_dict=state)


def with_aux_loss(trainer: Any, model: nn.Module, out: Any, return_outputs: bool, num_items_in_batch: Any) -> Any:
    """A transformers ``Trainer.compute_loss`` result plus GSWA's own training terms
    ([`gswa_plugin.aux_loss`][gswa_plugin.api.aux_loss]: the ``distinct_weight`` term, 0 when off).

    Shared by the trainers built on transformers' ``Trainer`` (``GSWATrainer``, lmms-engine's
    ``hf_trainer``, llava's ``LLaVATrainer``) and by lmms-engine's ``fsdp2_trainer``. A loss the
    model normalised by ``num_items_in_batch`` (or one from ``compute_loss_func``) is not divided by
    the gradient-accumulation steps afterwards (``Trainer.training_step``), so the term is divided
    here instead; otherwise the Trainer divides both. A trainer's ``loss_is_scaled_for_ga`` (as in
    transformers) decides instead when set: ``fsdp2_trainer`` sets it to False, its
    ``training_step`` dividing every loss.
    """
    from gswa_plugin.api import aux_loss

    host = unwrap(model)
    if not is_enabled(host):
        return out
    aux = aux_loss(host)
    fixed = getattr(trainer, "loss_is_scaled_for_ga", None)
    if fixed is not None:
        scaled = bool(fixed)
    else:
        accepts = getattr(trainer, "model_accepts_loss_kwargs", False)
        scaled = bool((accepts and num_items_in_batch is not None) or getattr(trainer, "compute_loss_func", None))
    if scaled:
        aux = aux / getattr(trainer, "current_gradient_accumulation_steps", 1)
    if return_outputs:
        loss, outputs = out
        return loss + aux.to(loss.device), outputs
    return out + aux.to(out.device)
