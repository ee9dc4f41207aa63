"""Trainer checkpoints: is one complete, and which one ``--resume latest`` resumes from.

[`GSWATrainer`][gswa_plugin.integrations.transformers.trainer.GSWATrainer] writes every
``checkpoint-N`` under ``output_dir/.gswa-incomplete/`` and renames it into place once it is
complete, so a run killed while saving leaves no half-written ``checkpoint-N``. Checkpoints written
otherwise (a stock ``Trainer``, a copy cut short, a damaged disk) are checked here before a resume:
[`find_resume_checkpoint`][gswa_plugin.integrations.transformers.checkpoints.find_resume_checkpoint]
returns the newest complete one and every newer one it skipped, with the reason. Light to import
(no transformers), so the preflight of ``gswa train --check`` can use it too.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from safetensors import SafetensorError, safe_open

from gswa_plugin import checkpoint as ckpt
from gswa_plugin.errors import GSWAError

#: Folder of ``output_dir`` where a checkpoint is written before it is renamed to ``checkpoint-N``.
STAGING_DIR = ".gswa-incomplete"
#: Sub-folder of a checkpoint holding GSWA's weights alone (``gswa_plugin.save`` format).
GSWA_SUBDIR = "gswa"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a Trainer checkpoint directory cannot be resumed from (``None`` when it is complete).

    Checks what a resume reads: ``trainer_state.json`` (parses), the model's weights (present,
    every shard of an index, safetensors headers readable), no empty file, and the ``gswa/``
    folder (readable, checksum, finite).
    """
    p = Path(path)
    if not p.is_dir():
        return "it is not a directory"
    state_file = p / "trainer_state.json"
    if not state_file.is_file():
        return "it has no trainer_state.json (its write was interrupted)"
    try:
        json.loads(state_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return f"its trainer_state.json is damaged ({exc})"
    empty = sorted(f.name for f in p.iterdir() if f.is_file() and f.stat().st_size == 0)
    if empty:
        return f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty (the write was interrupted)"
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            return f"its model.safetensors.index.json is damaged ({exc})"
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            return f"weight shard(s) {', '.join(missing[:3])} are missing"
    weights = sorted(p.glob("*.safetensors"))
    if not weights and not any((p / n).is_file() for n in ("pytorch_model.bin", "adapter_model.bin")):
        return "it holds no model weights (*.safetensors)"
    for f in weights:
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError) as exc:
            return f"{f.name} is truncated or damaged ({exc})"
    if (p / GSWA_SUBDIR).is_dir():
        try:
            ckpt.read_saved(p / GSWA_SUBDIR)
            ckpt.read_weights(p / GSWA_SUBDIR / ckpt.WEIGHTS_FILE)
        except GSWAError as exc:
            return f"its {GSWA_SUBDIR}/ folder is unusable ({exc})"
    return None


def find_resume_checkpoint(output_dir: str | os.PathLike[str]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete ``checkpoint-N`` of ``output_dir``, and the newer ones skipped with the
    reason (incomplete or damaged; interrupted writes left in ``.gswa-incomplete/`` included)."""
    out = Path(output_dir)
    skipped: list[tuple[Path, str]] = []
    staging = out / STAGING_DIR
    if staging.is_dir():
        for d in sorted(staging.iterdir()):
            skipped.append((d, "its write was interrupted before it was complete (it was never renamed into place)"))
    found = (
        sorted(
            (d for d in out.iterdir() if d.is_dir() and _CHECKPOINT_RE.match(d.name)),
            key=lambda d: int(_CHECKPOINT_RE.match(d.name).group(1)),  # type: ignore[union-attr]
            reverse=True,
        )
        if out.is_dir()
        else []
    )
    for d in found:
        why = checkpoint_problem(d)
        if why is None:
            return d, skipped
        skipped.append((d, why))
    return None, skipped
