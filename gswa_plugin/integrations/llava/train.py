"""Run llava's training entry point with GSWA.

Usage: llava's own arguments, plus ``--gswa_config`` (a YAML file with a top-level ``gswa:``
block) and optionally ``--attn_implementation`` (what llava's ``train_mem.py`` passes as
``flash_attention_2``; default: transformers' choice)::

    python -m gswa_plugin.integrations.llava.train --gswa_config gswa.yaml \\
        --model_name_or_path ... --vision_tower ... --image_aspect_ratio anyres ...
    deepspeed -m gswa_plugin.integrations.llava.train --gswa_config gswa.yaml --deepspeed zero2.json ...

The GSWA config is validated before llava starts; ``llava.train.train.LLaVATrainer`` is replaced
by its GSWA subclass
([`gswa_plugin.integrations.llava.gswa_trainer_class`][gswa_plugin.integrations.llava.gswa_trainer_class]) and llava's
``train()`` runs unchanged.
"""

from __future__ import annotations

import sys
from typing import Sequence

from gswa_plugin.errors import ConfigError
from gswa_plugin.integrations.llava import gswa_trainer_class, llava_module, prepare_llava_training_code, save_final
from gswa_plugin.plugins import check_config


def split_arguments(argv: Sequence[str]) -> tuple[str, str | None, list[str]]:
    """``(gswa_config path, attn_implementation, llava's arguments)`` from the command line.

    Raises:
        ConfigError: ``--gswa_config`` is missing or has no value.
    """
    rest: list[str] = []
    values: dict[str, str | None] = {"--gswa_config": None, "--attn_implementation": None}
    args = list(argv)
    i = 0
    while i < len(args):
        key, eq, value = args[i].partition("=")
        if key in values:
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise ConfigError([f"`{key}` needs a value"])
                value = args[i + 1]
                i += 1
            values[key] = value
        else:
            rest.append(args[i])
        i += 1
    if not values["--gswa_config"]:
        raise ConfigError(
            ["`--gswa_config <file.yaml>` is required (a YAML file with a top-level `gswa:` block)"]
        )
    return values["--gswa_config"], values["--attn_implementation"], rest


def main(argv: Sequence[str] | None = None) -> None:
    """Parse our two options, validate the GSWA config, patch llava's trainer, run llava's ``train()``."""
    gswa_path, attn_implementation, rest = split_arguments(sys.argv[1:] if argv is None else argv)
    config = check_config(str(gswa_path), source=str(gswa_path))
    llava_module("llava")
    prepare_llava_training_code()
    train_module = llava_module("llava.train.train")
    train_module.LLaVATrainer = gswa_trainer_class(train_module.LLaVATrainer, config)
    # llava parses sys.argv itself (HfArgumentParser)
    sys.argv = [sys.argv[0], *rest]
    train_module.train(attn_implementation=attn_implementation)
    from gswa_plugin.integrations.llava import last_trainer

    save_final(last_trainer)


if __name__ == "__main__":
    main()
