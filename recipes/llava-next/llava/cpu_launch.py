"""A CPU stand-in for ``deepspeed`` in ``finetune_gswa.sh``, for the tiny end-to-end run (CI only).

``recipes/internvl2-2b/e2e.py llava`` puts an executable named ``deepspeed`` first on ``PATH``
that runs this file with the llava environment's python, so the README's own
``bash recipes/llava-next/llava/finetune_gswa.sh`` runs unchanged up to the launcher. This file
takes the arguments the script gives ``deepspeed`` and runs the same module on one CPU process:

* dropped: ``--num_gpus N``, ``--module`` (deepspeed's own), ``--deepspeed CONFIG`` (ZeRO needs
  GPUs), and the two arguments only the LLaVA-NeXT repository's ``train.py`` knows
  (``--mm_tunable_parts``, ``--image_grid_pinpoints``): CI has PyPI ``llava-torch`` 1.2.2, whose
  parser refuses them. The grid pinpoints stay in the checkpoint's config; llava-torch's data
  pipeline gives one view per image (no anyres tiling in training);
* appended (the last value of an argument wins): ``CPU_OVERRIDES`` below, and
  ``--vision_tower`` from ``$LLAVA_TINY_TOWER`` (the tiny CLIP folder for the hub id).

Each change is printed. Nothing here is for real training.
"""

from __future__ import annotations

import os
import runpy
import sys

#: What a tiny CPU run changes (fp32, CPU, 2 steps of batch 2, no workers, one final save).
CPU_OVERRIDES = [
    "--bf16", "False", "--use_cpu", "True", "--max_steps", "2", "--per_device_train_batch_size", "2",
    "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0", "--save_strategy", "no",
    "--gradient_checkpointing", "False", "--group_by_modality_length", "False",
    # llava's `v1` (Vicuna) label masking counts tokens as a Llama SentencePiece tokenizer splits
    # Vicuna's separators; the tiny word-level tokenizer does not, so every sample would be masked
    # out (loss 0, nothing trains). `plain` (image + answer) trains on it.
    "--version", "plain",
]  # fmt: skip
#: deepspeed's own options with a value, and llava-torch-unknown options with a value (dropped).
DROP_WITH_VALUE = {"--num_gpus", "--deepspeed", "--mm_tunable_parts", "--image_grid_pinpoints"}


def translate(argv: list[str]) -> tuple[str, list[str], list[str], list[str]]:
    """(module, its arguments for one CPU process, the dropped arguments, the appended ones) from
    deepspeed's argv."""
    module, rest, dropped = None, [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in DROP_WITH_VALUE:
            dropped += argv[i : i + 2]
            i += 2
            continue
        if arg == "--module":
            module = argv[i + 1]
            i += 2
            continue
        rest.append(arg)
        i += 1
    if module is None:
        raise SystemExit(f"cpu_launch: expected `deepspeed ... --module MODULE ...`, got {argv}")
    tower = os.environ.get("LLAVA_TINY_TOWER")
    extra = CPU_OVERRIDES + (["--vision_tower", tower] if tower else [])
    return module, rest + extra, dropped, extra


def main() -> None:
    module, args, dropped, extra = translate(sys.argv[1:])
    print(f"cpu_launch: dropped {' '.join(dropped)}", flush=True)
    print(f"cpu_launch: appended {' '.join(extra)}", flush=True)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
