"""Run a recipe: build the model, freeze by policy, read the data, train, save.

Entry points (the same function underneath)::

    gswa train RECIPE.yaml [key=value ...] [--resume latest|CHECKPOINT]
    accelerate launch [--config_file ACCELERATE.yaml] -m gswa_plugin.cli train RECIPE.yaml [key=value ...]
    torchrun --nproc_per_node 8 -m gswa_plugin.cli train RECIPE.yaml

Overrides use dotted keys into the recipe (``training_args.max_steps=10``, ``gswa.variant=cosine``,
``freeze=gswa+projector``); values are parsed as YAML.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from gswa_plugin import checkpoint as ckpt
from gswa_plugin.hf import load_processor
from gswa_plugin.integrations.transformers.callback import GSWADiagnosticsCallback
from gswa_plugin.integrations.transformers.config import TrainConfig
from gswa_plugin.integrations.transformers.data import ConversationCollator, ConversationDataset
from gswa_plugin.integrations.transformers.freezing import apply_freezing, part_of
from gswa_plugin.integrations.transformers.trainer import GSWATrainer, from_pretrained_with_gswa

logger = logging.getLogger("gswa_plugin.integrations.transformers")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_model(cfg: TrainConfig) -> nn.Module:
    """The host model with GSWA enabled, LoRA added if asked, and parameters frozen by policy."""
    kwargs: dict[str, Any] = {"dtype": _DTYPES.get(cfg.model.dtype, "auto")}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    model = from_pretrained_with_gswa(
        cfg.model.name_or_path,
        gswa=cfg.gswa,
        gswa_dtype=_DTYPES.get(cfg.model.gswa_dtype),
        **kwargs,
    )
    if cfg.model.gswa_checkpoint:
        ckpt.load(model, cfg.model.gswa_checkpoint)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        names = "|".join(cfg.lora.target_modules)
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            # only inside the language model: the vision tower and GSWA have layers of the same names
            target_modules=rf".*language_model.*\.({names})",
        )
        model = get_peft_model(model, lora)
    apply_freezing(model, cfg.freeze, lora=cfg.lora.enabled)
    return model


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts per part (``gswa``, ``projector``, ``language_model``, ``vision``)."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = "lora" if "lora_" in name else (part_of(name) or "other")
            out[key] = out.get(key, 0) + p.numel()
    return out


def build_trainer(cfg: TrainConfig) -> GSWATrainer:
    """Everything ready to ``train()``: model, processor, data, TrainingArguments, callback."""
    from transformers import TrainingArguments

    args_kwargs = {"remove_unused_columns": False, "save_safetensors": True, **cfg.training_args}
    args_kwargs = {k: v for k, v in args_kwargs.items() if k in _training_argument_names()}
    args = TrainingArguments(**args_kwargs)
    processor = load_processor(
        cfg.model.processor or cfg.model.name_or_path, cfg.model.max_patches, cfg.model.min_patches
    )
    model = build_model(cfg)
    data_kwargs = dict(
        processor=processor,
        template=cfg.data.template,
        system_prompt=cfg.data.system_prompt,
        max_length=cfg.data.max_length,
        image_root=cfg.data.image_root,
        on_missing_image=cfg.data.on_missing_image,
    )
    train_ds = ConversationDataset(cfg.data.train_files, **data_kwargs)
    eval_ds = ConversationDataset(cfg.data.eval_files, **data_kwargs) if cfg.data.eval_files else None
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    callbacks = []
    if cfg.diagnostics.enabled:
        callbacks.append(
            GSWADiagnosticsCallback(
                cfg.diagnostics.thresholds(), cfg.diagnostics.uniform_after_steps, cfg.diagnostics.warn_every_steps
            )
        )
    if args.process_index == 0:
        logger.info("trainable parameters by part: %s", trainable_summary(model))
    return GSWATrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=ConversationCollator(pad),
        callbacks=callbacks,
        gswa_learning_rate=cfg.gswa_learning_rate,
        gswa_weight_decay=cfg.gswa_weight_decay,
        processor=processor,
    )


def _training_argument_names() -> set[str]:
    from gswa_plugin.integrations.transformers.config import training_argument_names

    return set(training_argument_names())


def train(cfg: TrainConfig, resume_from_checkpoint: str | bool | None = None, source: str | None = None) -> GSWATrainer:
    """Run a recipe end to end; returns the trainer (its model holds the trained GSWA).

    The final model goes to ``training_args.output_dir`` with GSWA's weights alone in its
    ``gswa/`` sub-folder (``gswa_plugin.load(model, output_dir + "/gswa")`` reads them).

    Raises:
        ConfigError: the preflight (``gswa train --check`` without decoding every image) found
            problems; nothing was loaded.
    """
    from gswa_plugin.integrations.transformers.preflight import preflight

    report = preflight(cfg, resume_from_checkpoint, decode_images=False)
    for note in report.notes:
        logger.warning(note)
    report.raise_if_failed(source)
    trainer = build_trainer(cfg)
    resume = resume_from_checkpoint
    if resume is None:
        resume = cfg.training_args.get("resume_from_checkpoint")
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # GSWATrainer._save also writes the gswa/ sub-folder
    trainer.save_state()
    return trainer
