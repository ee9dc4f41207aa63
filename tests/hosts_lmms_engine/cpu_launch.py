"""The test's launcher: gswa-plugin's lmms-engine launcher, adapted at the boundary to run on CPU.

lmms-engine 0.1.4 assumes CUDA in a few places; each adaptation below replaces one of them with its
CPU equivalent and nothing else (the trainers, data pipeline, monkey-patch machinery and GSWA
integration run unchanged):

* ``ProcessGroupManager`` builds its device meshes with ``init_device_mesh("cuda", ...)``: the
  mesh is built on ``"cpu"`` (gloo) instead.
* ``torch.cuda.get_device_name`` / ``synchronize`` / ``max_memory_allocated`` /
  ``memory_allocated`` / ``empty_cache`` are called for compute tracking and logging: they answer
  ``"cpu"``, 0, or do nothing.
* the FSDP2 path places the model, the broadcast state and the gradient norm on
  ``torch.cuda.current_device()``: it answers ``"cpu"``; its loss runs under
  ``torch.autocast(device_type="cuda")``: the autocast is made on ``"cpu"`` (bf16).
* every 10 steps the Hugging Face trainer's MFU logging puts a tensor on ``device=local_rank``
  (a CUDA index; -1 without torchrun): in that module only, an integer device given to
  ``torch.tensor`` is ``"cpu"``.
* lmms-engine's ``TrainRunner`` reads ``trainer_args.only_save_mm_adapter``, a field its own
  ``TrainingArguments`` lacks in 0.1.4 (an AttributeError after training on any device): the
  field is given its default, ``False``.

It also records what GSWA computed: a hook plugin appends one JSON line per forward (the tile
weights of every image) to the file named by ``GSWA_TEST_WEIGHTS_LOG``.

Usage: ``python -m tests.hosts_lmms_engine.cpu_launch config_yaml=<yaml>`` (or under torchrun).
"""

from __future__ import annotations

import json
import os

import torch

from gswa_plugin.hookspecs import hookimpl


def _adapt_cuda_to_cpu() -> None:
    import lmms_engine.parallel.process_group_manager as pgm_module
    from lmms_engine.train.config import TrainingArguments

    real_init_device_mesh = pgm_module.init_device_mesh

    def init_device_mesh(device_type, *args, **kwargs):
        return real_init_device_mesh("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    pgm_module.init_device_mesh = init_device_mesh
    torch.cuda.get_device_name = lambda *a, **k: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
    torch.cuda.memory_allocated = lambda *a, **k: 0
    torch.cuda.empty_cache = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"
    real_autocast = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return real_autocast("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    torch.autocast = autocast
    # Only the trainer module's `torch.tensor` (replacing it in torch itself broke SigLIP's
    # position embeddings in the LLaVA-OneVision run: an IndexError in its vision tower).
    import types

    import lmms_engine.train.hf.trainer as hf_trainer_module

    real_tensor = torch.tensor

    def tensor(*args, device=None, **kwargs):
        return real_tensor(*args, device="cpu" if isinstance(device, int) else device, **kwargs)

    scoped_torch = types.ModuleType("torch")
    scoped_torch.__dict__.update(torch.__dict__)
    scoped_torch.tensor = tensor
    hf_trainer_module.torch = scoped_torch
    if not hasattr(TrainingArguments, "only_save_mm_adapter"):
        TrainingArguments.only_save_mm_adapter = False


class _WeightsLog:
    """A gswa plugin writing each forward's tile weights to a JSONL file."""

    def __init__(self, path: str):
        self.path = path

    @hookimpl
    def gswa_weights_computed(self, weights, batch, handle):
        rank = int(os.environ.get("RANK", "0"))
        line = {"rank": rank, "training": bool(handle.model.training), "weights": [w.float().tolist() for w in weights]}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def main() -> None:
    _adapt_cuda_to_cpu()
    log = os.environ.get("GSWA_TEST_WEIGHTS_LOG")
    if log:
        from gswa_plugin.plugins import register_plugin

        register_plugin(_WeightsLog(log), name="test-weights-log")
    from gswa_plugin.integrations.lmms_engine.launch import main as launch

    launch()


if __name__ == "__main__":
    main()
