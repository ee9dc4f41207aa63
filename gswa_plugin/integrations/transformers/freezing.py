"""Freezing policies: which parameters of a GSWA-enabled model train.

A model is split into four parts, found by module name so that the native InternVL classes, a
PEFT-wrapped model and other hosts with the usual names all work:

* ``gswa``: the ``gswa`` submodule that [`gswa_plugin.enable`][gswa_plugin.api.enable] attaches;
* ``projector``: ``multi_modal_projector`` (native transformers), ``mlp1`` (InternVL2 remote
  code), ``mm_projector`` (LLaVA), ``connector`` (Idefics3/SmolVLM);
* ``language_model``: ``language_model`` and ``lm_head``;
* ``vision``: ``vision_tower``, ``vision_model``.

With LoRA, the language model's base weights stay frozen and its ``lora_`` parameters train
whatever the policy says about the language model (the recipe check refuses a policy that
would also train the LM in full).
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from gswa_plugin.errors import ConfigError
from gswa_plugin.integrations.transformers.config import FREEZE_POLICIES

#: Module names (a path component) that identify each part.
PART_MODULES: dict[str, tuple[str, ...]] = {
    "gswa": ("gswa",),
    "projector": ("multi_modal_projector", "mlp1", "mm_projector", "connector"),
    "language_model": ("language_model", "lm_head"),
    "vision": ("vision_tower", "vision_model"),
}


def part_of(name: str) -> str | None:
    """The part (``gswa``, ``projector``, ``language_model``, ``vision``) a parameter belongs to."""
    components = name.split(".")
    for part in ("gswa", "projector", "vision", "language_model"):
        if any(m in components for m in PART_MODULES[part]):
            return part
    return None


def is_gswa_parameter(name: str) -> bool:
    return part_of(name) == "gswa"


def apply_freezing(model: nn.Module, policy: str, lora: bool = False) -> list[str]:
    """Set ``requires_grad`` by ``policy``; returns the names of the parameters that train.

    Args:
        model: a model with GSWA enabled (possibly wrapped by PEFT).
        policy: a key of [`FREEZE_POLICIES`][gswa_plugin.integrations.transformers.config.FREEZE_POLICIES].
        lora: whether LoRA adapters were added; their ``lora_`` parameters then train too.

    Raises:
        ConfigError: unknown policy, no ``gswa`` parameters, or a part the policy names is
            absent from the model.
    """
    if policy not in FREEZE_POLICIES:
        raise ConfigError([f"`freeze` must be one of {', '.join(map(repr, FREEZE_POLICIES))}; got {policy!r}"])
    parts = set(FREEZE_POLICIES[policy])
    found: set[str] = set()
    trainable: list[str] = []
    for name, param in model.named_parameters():
        part = part_of(name)
        if part is not None:
            found.add(part)
        train = part in parts or (policy == "all" and part is None)
        if lora and "lora_" in name:
            train = True
        elif lora and part == "language_model":
            train = False
        param.requires_grad_(train)
        if train:
            trainable.append(name)
    missing = sorted(p for p in parts if p not in found)
    if missing:
        raise ConfigError(
            [
                f"freezing policy {policy!r} trains {', '.join(missing)}, but the model has no such module "
                f"(looked for {', '.join('`' + m + '`' for p in missing for m in PART_MODULES[p])}); "
                + ("enable GSWA before freezing" if "gswa" in missing else "pick a policy without it")
            ]
        )
    return trainable


def count_trainable(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params if p.requires_grad)
