"""Merge an lmms-engine FSDP2 checkpoint of a GSWA run into one transformers checkpoint.

lmms-engine's FSDP2 trainer saves the model sharded (``checkpoint-N/pytorch_model_fsdp_0/``) and
its merger (``python -m lmms_engine.merger``) loads the shards into the host class built from
``config.json``. GSWA's parameters are in those shards too (they live on the model, under
``gswa.``), the host class has no such keys, and lmms-engine 0.1.4's merger stops on them
("Unexpected key(s) in state_dict: gswa..."). GSWA is already saved whole in ``checkpoint-N/gswa``
by gswa-plugin's checkpoint hook, so this command runs lmms-engine's merger with the ``gswa.``
keys taken out of the consolidated state, after checking that they equal ``checkpoint-N/gswa``.
It writes into the checkpoint folder itself by default, as lmms-engine's merger means to (0.1.4
then stops copying ``processor_config.json`` onto itself, a ``SameFileError`` after everything
is written; that one copy is skipped here)::

    python -m gswa_plugin.integrations.lmms_engine.merge --checkpoint_path outputs/run/checkpoint-1000

The result is the host's weights in ``from_pretrained`` layout next to ``gswa/``; evaluate it with
``pretrained=<checkpoint>,gswa=<checkpoint>/gswa`` (lmms-eval's ``gswa_*`` models).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any, Sequence

from gswa_plugin.errors import CheckpointError
from gswa_plugin.handle import MODULE_ATTR

#: The prefix of GSWA's parameters in the host model's state dict.
GSWA_PREFIX = MODULE_ATTR + "."


def split_gswa(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(host state, GSWA state without its prefix) from a consolidated state dict."""
    host = {k: v for k, v in state.items() if not k.startswith(GSWA_PREFIX)}
    gswa = {k[len(GSWA_PREFIX):]: v for k, v in state.items() if k.startswith(GSWA_PREFIX)}
    return host, gswa


def check_against_saved(gswa: dict[str, Any], saved_dir: Path) -> None:
    """The GSWA weights in the shards must be the ones in ``saved_dir/gswa.safetensors``.

    Raises:
        CheckpointError: the folder is missing, or a key or value differs.
    """
    import torch
    from safetensors.torch import load_file

    path = saved_dir / "gswa.safetensors"
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: the FSDP2 shards hold GSWA weights but the checkpoint has no saved GSWA; "
            "was the run launched through `python -m gswa_plugin.integrations.lmms_engine.launch`?"
        )
    saved = load_file(str(path))
    if set(saved) != set(gswa):
        raise CheckpointError(f"{path} and the shards hold different GSWA parameters: {sorted(set(saved) ^ set(gswa))}")
    for key, value in gswa.items():
        if not torch.equal(saved[key].float(), value.float()):
            raise CheckpointError(f"GSWA parameter {key!r} differs between the shards and {path}")


def merge(checkpoint_path: str | Path, output_path: str | Path | None = None) -> Path:
    """Merge ``checkpoint_path`` (a ``checkpoint-N`` folder or the run folder: its newest one)."""
    from lmms_engine.merger import FSDP2Merger

    checked: list[int] = []

    class GSWAMerger(FSDP2Merger):
        def consolidate(self, shard_state_dicts: list[dict]) -> dict:
            host, gswa = split_gswa(super().consolidate(shard_state_dicts))
            if gswa:
                check_against_saved(gswa, resolved / MODULE_ATTR)
                checked.append(len(gswa))
            return host

    merger = GSWAMerger()
    resolved = merger._resolve_checkpoint_path(Path(checkpoint_path))
    out = Path(output_path) if output_path else resolved
    try:
        merger.merge(Path(checkpoint_path), output_path=out)
    except shutil.SameFileError:
        pass  # its last step, copying processor_config.json onto itself; the merged checkpoint is complete
    print(f"merged {resolved} into {out} ({checked[0] if checked else 0} GSWA tensors left to {resolved / MODULE_ATTR})")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", required=True, help="checkpoint-N folder (or the run folder: its newest)")
    parser.add_argument("--output_path", default=None, help="where to write (default: the checkpoint-N folder)")
    args = parser.parse_args(argv)
    merge(args.checkpoint_path, args.output_path)


if __name__ == "__main__":
    main()
