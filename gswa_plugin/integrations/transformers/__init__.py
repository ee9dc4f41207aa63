"""Training GSWA with transformers' Trainer (and accelerate, DeepSpeed, FSDP, PEFT).

Public pieces::

    from gswa_plugin.integrations.transformers import (
        load_recipe, train,                      # run a recipe (also `gswa train`)
        from_pretrained_with_gswa, GSWATrainer,  # checkpoints with gswa.* keys, GSWA learning rate
        GSWADiagnosticsCallback, add_diagnostics,
        ConversationDataset, ConversationCollator, load_processor,
        apply_freezing, FREEZE_POLICIES,
    )
"""

from __future__ import annotations

from gswa_plugin.hf import load_processor, save_processor
from gswa_plugin.integrations import unwrap
from gswa_plugin.integrations.transformers.callback import GSWADiagnosticsCallback, add_diagnostics
from gswa_plugin.integrations.transformers.config import FREEZE_POLICIES, TrainConfig, load_recipe, validate_recipe
from gswa_plugin.integrations.transformers.data import ConversationCollator, ConversationDataset
from gswa_plugin.integrations.transformers.freezing import apply_freezing
from gswa_plugin.integrations.transformers.run import build_model, build_trainer, train
from gswa_plugin.integrations.transformers.trainer import (
    GSWATrainer,
    extract_gswa,
    from_pretrained_with_gswa,
    read_gswa_state,
)

__all__ = [
    "FREEZE_POLICIES",
    "ConversationCollator",
    "ConversationDataset",
    "GSWADiagnosticsCallback",
    "GSWATrainer",
    "TrainConfig",
    "add_diagnostics",
    "apply_freezing",
    "build_model",
    "build_trainer",
    "extract_gswa",
    "from_pretrained_with_gswa",
    "load_processor",
    "load_recipe",
    "read_gswa_state",
    "save_processor",
    "train",
    "unwrap",
    "validate_recipe",
]
