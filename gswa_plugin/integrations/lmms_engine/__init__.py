"""GSWA inside lmms-engine, through lmms-engine's own extension points.

lmms-engine is extended by import-time registries; this module registers, when
[`register`][gswa_plugin.integrations.lmms_engine.register] runs (the launcher calls it before lmms-engine's CLI):

* a monkey patch of type ``gswa`` (``MONKEY_PATCHER.register(model_type, "gswa")``) for every
  model type GSWA has an adapter for. lmms-engine applies it to the model instance from the YAML
  it already reads::

      model_config:
        monkey_patch_kwargs:
          patch_type: [gswa]      # add "liger" etc. as before
          gswa:                   # the GSWA block (gswa_plugin.GSWAConfig); optional
            variant: self_attn

* GSWA-aware versions of the ``hf_trainer`` and ``fsdp2_trainer`` entries of
  ``TRAINER_REGISTER``: identical to lmms-engine's classes, plus GSWA's weights and config
  written with [`gswa_plugin.save`][gswa_plugin.checkpoint.save] to ``<checkpoint>/gswa`` next to every checkpoint and
  the
  final model (the model's own checkpoint holds them too, under ``gswa.``), so
  [`gswa_plugin.load`][gswa_plugin.checkpoint.load] works on the result; both add GSWA's
  ``distinct_weight`` term to the loss they backpropagate;
* a data processor ``internvl`` (``@register_processor``) for transformers' native InternVL
  classes, which lmms-engine lacks: chat messages in lmms-engine's OpenAI-style format ->
  ``input_ids``, ``labels`` (assistant turns only) and ``pixel_values`` (every tile of every image,
  thumbnail last), tiled by the real ``InternVLProcessor``.

lmms-engine logs and skips a monkey patch that raises; a GSWA that silently failed to turn on
would train a model without it, so a failure escapes that handler (as
[`GSWAPatchFailed`][gswa_plugin.integrations.lmms_engine.GSWAPatchFailed], a ``BaseException``) and the launcher
re-raises the original error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from gswa_plugin.api import enable
from gswa_plugin.config import GSWAConfig
from gswa_plugin.errors import ConfigError
from gswa_plugin.handle import MODULE_ATTR, get_handle, is_enabled
from gswa_plugin.integrations import require, save_into_checkpoint, unwrap, with_aux_loss
from gswa_plugin.plugins import check_config

#: The ``patch_type`` that turns GSWA on in ``model_config.monkey_patch_kwargs``.
PATCH_TYPE = "gswa"
#: Where the GSWA block sits inside ``monkey_patch_kwargs``.
BLOCK_KEY = "gswa"
#: What to install when lmms-engine is missing.
INSTALL = "pip install 'gswa-plugin[lmms-engine]'"
#: Model types the ``gswa`` patch is registered for by default (the transformers families GSWA
#: has adapters for); the launcher adds the model type of the YAML's model.
DEFAULT_MODEL_TYPES: tuple[str, ...] = ("internvl", "llava_onevision", "llava_next", "idefics3", "smolvlm")

_registered_model_types: set[str] = set()
_trainers_wrapped = False


class GSWAPatchFailed(BaseException):
    """Carries an error raised while enabling GSWA past lmms-engine's log-and-skip handler.

    Attributes:
        error: the original exception (re-raised by the launcher).
    """

    def __init__(self, error: BaseException):
        super().__init__(f"GSWA could not be enabled: {type(error).__name__}: {error}")
        self.error = error


def lmms_engine_module(name: str = "lmms_engine") -> Any:
    """Import an lmms-engine module, or raise an error naming the extra to install."""
    return require(name, INSTALL, "lmms-engine")


def apply_gswa(model: Any, gswa: dict[str, Any] | None = None) -> None:
    """The ``gswa`` monkey patch: enable GSWA on the model instance lmms-engine built.

    Args:
        model: the model lmms-engine built from ``model_config``.
        gswa: the GSWA block of ``monkey_patch_kwargs`` (``None``: the defaults).
    """
    try:
        if is_enabled(model):
            return
        cfg = GSWAConfig.from_dict(gswa or {}, source="model_config.monkey_patch_kwargs.gswa")
        handle = enable(model, cfg)
        params = list(handle.module.parameters())
        dtype = params[0].dtype if params else "n/a"
        _log(
            f"GSWA enabled: adapter '{handle.adapter.name}', variant '{cfg.variant}', "
            f"{sum(p.numel() for p in params)} parameters in `{MODULE_ATTR}`, dtype {dtype}"
        )
    except Exception as exc:
        raise GSWAPatchFailed(exc) from exc


def _log(message: str) -> None:
    try:
        from loguru import logger

        logger.info(message)
    except ImportError:  # pragma: no cover - loguru is a dependency of lmms-engine
        print(message)


def model_types_for_gswa(extra: Iterable[str] = ()) -> list[str]:
    """Model types the ``gswa`` patch should be registered for: the defaults, the
    ``model_types`` of registered adapters, and ``extra``."""
    from gswa_plugin.plugins import adapters

    types = list(DEFAULT_MODEL_TYPES)
    for adapter in adapters().values():
        types.extend(getattr(adapter, "model_types", ()) or ())
    types.extend(t for t in extra if t)
    return list(dict.fromkeys(types))


def register(model_types: Iterable[str] = ()) -> None:
    """Register GSWA with lmms-engine's registries (idempotent).

    Args:
        model_types: model types to register the ``gswa`` patch for beyond the defaults (the
            launcher passes the one of the YAML's model).

    Raises:
        HostNotInstalledError: lmms-engine is not installed.
    """
    global _trainers_wrapped
    models = lmms_engine_module("lmms_engine.models")
    for model_type in model_types_for_gswa(model_types):
        if model_type not in _registered_model_types:
            models.MONKEY_PATCHER.register(model_type, PATCH_TYPE)(apply_gswa)
            _registered_model_types.add(model_type)
    if not _trainers_wrapped:
        _wrap_trainers()
        _trainers_wrapped = True
    mapping = lmms_engine_module("lmms_engine.mapping_func")
    if "internvl" not in mapping.DATAPROCESSOR_MAPPING:
        from gswa_plugin.integrations.lmms_engine.internvl import InternVLDataProcessor

        mapping.register_processor("internvl")(InternVLDataProcessor)


def _wrap_trainers() -> None:
    """Replace the ``hf_trainer`` / ``fsdp2_trainer`` registry entries with subclasses that also
    write GSWA into every checkpoint and add GSWA's training terms to the loss; without GSWA on
    the model they behave exactly as before."""
    registry = lmms_engine_module("lmms_engine.train.registry").TRAINER_REGISTER
    lmms_engine_module("lmms_engine.train")  # importing it registers lmms-engine's trainers
    if "hf_trainer" in registry:
        base = registry["hf_trainer"]

        class GSWAHFTrainer(base):  # type: ignore[misc, valid-type]
            """lmms-engine's ``hf_trainer`` that also writes ``<checkpoint>/gswa`` and adds GSWA's own
            training terms (``distinct_weight``) to the loss."""

            def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kwargs: Any) -> Any:
                out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
                return with_aux_loss(self, model, out, return_outputs, kwargs.get("num_items_in_batch"))

            def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
                super()._save(output_dir, state_dict=state_dict)
                save_into_checkpoint(self.model, output_dir or self.args.output_dir, state_dict)

            def _save_checkpoint(self, model: Any, trial: Any, metrics: Any = None) -> None:
                super()._save_checkpoint(model, trial)
                if getattr(self.args, "only_save_mm_adapter", False) and self.args.should_save:
                    # lmms-engine's projector-only checkpoints skip `_save`; add GSWA to them.
                    folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
                    save_into_checkpoint(self.model, folder)

        GSWAHFTrainer.__name__ = GSWAHFTrainer.__qualname__ = f"GSWA{base.__name__}"
        registry["hf_trainer"] = GSWAHFTrainer
    if "fsdp2_trainer" in registry:
        base = registry["fsdp2_trainer"]

        class GSWAFSDP2Trainer(base):  # type: ignore[misc, valid-type]
            """lmms-engine's ``fsdp2_trainer`` that also writes ``<checkpoint>/gswa`` (rank 0, after
            gathering GSWA's sharded parameters on every rank) and adds GSWA's own training terms
            (``distinct_weight``) to the loss."""

            # lmms-engine 0.1.4's `FSDP2SFTTrainer.training_step` divides whatever `compute_loss`
            # returns by `args.gradient_accumulation_steps` before `backward()` (and averages it over
            # ranks for the log; FSDP2 averages the gradients): the term added in `compute_loss` is
            # scaled exactly like the task loss, so `with_aux_loss` must not divide it again.
            loss_is_scaled_for_ga = False

            def compute_loss(self, batch: Any) -> Any:
                return with_aux_loss(self, self.model, super().compute_loss(batch), False, None)

            def save_checkpoints(self, output_path: str, step: int, total_limit: int | None = None) -> None:
                super().save_checkpoints(output_path, step, total_limit=total_limit)
                import torch.distributed as dist

                rank = dist.get_rank() if dist.is_initialized() else 0
                save_into_checkpoint(self.model, output_path, write=rank == 0)
                if dist.is_initialized():
                    dist.barrier()

        GSWAFSDP2Trainer.__name__ = GSWAFSDP2Trainer.__qualname__ = f"GSWA{base.__name__}"
        registry["fsdp2_trainer"] = GSWAFSDP2Trainer


# --- the YAML ------------------------------------------------------------------------------------
def gswa_settings(config: dict[str, Any]) -> tuple[bool, GSWAConfig | None]:
    """Whether an lmms-engine config turns GSWA on, and its validated GSWA config.

    Raises:
        ConfigError: the GSWA block is invalid, or present without ``gswa`` in ``patch_type``
            (or ``patch_type`` is not a list).
    """
    model_config = config.get("model_config") or {}
    kwargs = model_config.get("monkey_patch_kwargs") or {}
    patch_types = kwargs.get("patch_type", [])
    if isinstance(patch_types, str):
        patch_types = [patch_types]
    if not isinstance(patch_types, list):
        raise ConfigError(
            [f"`model_config.monkey_patch_kwargs.patch_type` must be a list, got {type(patch_types).__name__}"]
        )
    on = PATCH_TYPE in patch_types
    block = kwargs.get(BLOCK_KEY)
    if block is not None and not on:
        raise ConfigError(
            [
                f"`model_config.monkey_patch_kwargs` has a `{BLOCK_KEY}:` block but `patch_type` "
                f"({patch_types}) lacks `{PATCH_TYPE}`, so GSWA would not be applied; add `{PATCH_TYPE}` to `patch_type`"
            ]
        )
    if not on:
        return False, None
    source = "model_config.monkey_patch_kwargs.gswa"
    return True, check_config(block or {}, source=source)


def model_type_of(config: dict[str, Any]) -> str | None:
    """The model type an lmms-engine config builds (from ``load_from_config`` or the local
    checkpoint's ``config.json``); ``None`` when it cannot be read without the hub."""
    model_config = config.get("model_config") or {}
    from_config = model_config.get("load_from_config") or {}
    if from_config.get("model_type"):
        return str(from_config["model_type"])
    path = model_config.get("load_from_pretrained_path")
    if path and (Path(path) / "config.json").is_file():
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
    return None


def gswa_handle_of(model: Any) -> Any:
    """The GSWA handle of a (possibly wrapped) model a trainer holds."""
    return get_handle(unwrap(model))
