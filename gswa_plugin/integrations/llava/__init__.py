"""GSWA inside the llava training code (LLaVA / LLaVA-NeXT: ``llava.train.train``).

The llava package's models mix in ``LlavaMetaForCausalLM``; the ``llava_torch`` adapter
([`gswa_plugin.adapters.llava_torch`][gswa_plugin.adapters.llava_torch]) weights the views at its ``encode_images``
seam, where
anyres images arrive as the base image first, then the tiles. This module turns it on inside
llava's own training loop:

* [`gswa_trainer_class`][gswa_plugin.integrations.llava.gswa_trainer_class] subclasses llava's ``LLaVATrainer``: GSWA
  is enabled on the model
  when the trainer is built (after llava has loaded the vision tower, frozen what its arguments
  say, and before the optimizer is made, so GSWA's parameters train), and GSWA's weights and config
  are written with [`gswa_plugin.save`][gswa_plugin.checkpoint.save] to ``<checkpoint>/gswa`` whenever the trainer
  saves a
  model, and to ``<output_dir>/gswa`` at the end;
* the launcher [`gswa_plugin.integrations.llava.train`][gswa_plugin.integrations.llava.train] puts that class in place
  of
  ``llava.train.train.LLaVATrainer`` and runs llava's ``train()`` unchanged::

      python -m gswa_plugin.integrations.llava.train --gswa_config gswa.yaml <llava's arguments>

llava pins old torch/transformers releases; install it without them next to gswa-plugin's
(see the docs page "llava"): ``pip install 'gswa-plugin[llava]'`` then
``pip install --no-deps llava-torch==1.2.2.post1`` (LLaVA-1.5/1.6 code), or the LLaVA-NeXT
repository from source with ``pip install --no-deps -e .``.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from torch import nn

from gswa_plugin.adapters.llava_torch import is_llava_model
from gswa_plugin.api import enable
from gswa_plugin.config import GSWAConfig, resolve_config
from gswa_plugin.errors import AdapterNotFoundError
from gswa_plugin.handle import is_enabled
from gswa_plugin.integrations import require, save_into_checkpoint, unwrap, with_aux_loss

#: How to install the llava package next to gswa-plugin (it pins torch 2.0 / transformers 4.36).
INSTALL = "pip install 'gswa-plugin[llava]' && pip install --no-deps llava-torch==1.2.2.post1"

#: The trainer the launcher built most recently (its final save happens after llava's ``train()``).
last_trainer: Any = None


def llava_module(name: str = "llava") -> Any:
    """Import a module of the llava package, or raise an error saying how to install it."""
    return require(name, INSTALL + " (or the LLaVA-NeXT repository: pip install --no-deps -e .)", "llava")


def llava_model_of(model: nn.Module) -> nn.Module:
    """The llava model inside ``model`` (under a PEFT/LoRA or other wrapper)."""
    for module in model.modules():
        if is_llava_model(module):
            return module
    raise AdapterNotFoundError(
        f"{type(model).__name__} holds no model of the llava package (LlavaMetaForCausalLM); the llava "
        "integration applies GSWA to llava's own model classes"
    )


def enable_on_llava(model: nn.Module, config: GSWAConfig | dict[str, Any] | str | None) -> nn.Module:
    """Enable GSWA on the llava model inside ``model`` (idempotent); returns that model."""
    inner = llava_model_of(model)
    if not is_enabled(inner):
        enable(inner, resolve_config(config))
    return inner


def gswa_trainer_class(base: type, config: GSWAConfig) -> type:
    """A subclass of llava's ``LLaVATrainer`` (``base``) that enables GSWA and saves it."""

    class GSWALLaVATrainer(base):  # type: ignore[misc, valid-type]
        """llava's trainer with GSWA enabled on its model and saved next to its checkpoints."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            global last_trainer
            model = kwargs.get("model", args[0] if args else None)
            if model is None:
                raise AdapterNotFoundError("llava's trainer was built without a model; GSWA has nothing to enable")
            enable_on_llava(model, config)
            if "tokenizer" in kwargs and not _hf_trainer_takes("tokenizer"):
                # llava passes `tokenizer=`, which transformers 5 renamed `processing_class`
                kwargs["processing_class"] = kwargs.pop("tokenizer")
            super().__init__(*args, **kwargs)
            last_trainer = self

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kwargs: Any) -> Any:
            # GSWA's own training terms (``distinct_weight``) join the task loss
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
            return with_aux_loss(self, model, out, return_outputs, kwargs.get("num_items_in_batch"))

        def _get_train_sampler(self, *args: Any) -> Any:
            # llava's override takes no dataset argument (transformers 5 passes one) and reads
            # self.train_dataset, which is what transformers 5 passes for training.
            if not inspect.signature(super()._get_train_sampler).parameters:
                return super()._get_train_sampler()
            return super()._get_train_sampler(*args)

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            super()._save(output_dir, state_dict)
            if self.args.should_save:
                save_into_checkpoint(self.model, output_dir or self.args.output_dir, state_dict)

        def _save_checkpoint(self, model: Any, trial: Any, metrics: Any = None) -> None:
            if getattr(self.args, "tune_mm_mlp_adapter", False):
                # llava's projector-only checkpoints skip `_save`: add GSWA to them
                super()._save_checkpoint(model, trial, metrics)
                if self.args.should_save:
                    folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
                    save_into_checkpoint(self.model, folder)
            elif _hf_save_checkpoint_takes_metrics():
                super()._save_checkpoint(model, trial, metrics)
            else:
                # llava passes `metrics` on to transformers' `_save_checkpoint`, which transformers 5
                # no longer takes; its own branch here only forwards, so call transformers' directly.
                from transformers import Trainer

                Trainer._save_checkpoint(self, model, trial)

    GSWALLaVATrainer.__name__ = GSWALLaVATrainer.__qualname__ = f"GSWA{base.__name__}"
    return GSWALLaVATrainer


def _hf_save_checkpoint_takes_metrics() -> bool:
    from transformers import Trainer

    return "metrics" in inspect.signature(Trainer._save_checkpoint).parameters


def _hf_trainer_takes(argument: str) -> bool:
    from transformers import Trainer

    return argument in inspect.signature(Trainer.__init__).parameters


def prepare_llava_training_code() -> None:
    """Let llava's training code import under transformers 5.

    ``llava.train.llava_trainer`` imports ``ALL_LAYERNORM_LAYERS`` from ``transformers.trainer``;
    transformers 5 keeps that list only in ``transformers.pytorch_utils``. The same object is
    made visible where llava looks for it; nothing else changes.
    """
    import transformers.trainer as hf_trainer

    if not hasattr(hf_trainer, "ALL_LAYERNORM_LAYERS"):
        from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

        hf_trainer.ALL_LAYERNORM_LAYERS = ALL_LAYERNORM_LAYERS


def save_final(trainer: Any) -> None:
    """After llava's ``train()``: write ``<output_dir>/gswa`` where llava's own final save skipped
    ``_save`` (projector-only pre-training, ``tune_mm_mlp_adapter``)."""
    if trainer is None or not trainer.args.should_save:
        return
    target = os.path.join(trainer.args.output_dir, "gswa")
    if not os.path.exists(target) and is_enabled(unwrap(trainer.model)):
        save_into_checkpoint(trainer.model, trainer.args.output_dir)
