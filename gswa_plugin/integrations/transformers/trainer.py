"""GSWA inside transformers' ``Trainer`` and ``save_pretrained``/``from_pretrained``.

GSWA's parameters live in ``model.gswa`` (prefix ``gswa.``), so a plain ``save_pretrained``
already writes them next to the host's weights, and the Trainer checkpoints and resumes them.
What this module adds:

* [`from_pretrained_with_gswa`][gswa_plugin.integrations.transformers.trainer.from_pretrained_with_gswa]: load a
  checkpoint that has ``gswa.*`` keys (or a base
  model without them), enable GSWA first, then load its weights strictly;
* [`GSWATrainer`][gswa_plugin.integrations.transformers.trainer.GSWATrainer]: a separate learning rate for GSWA's
  parameters, a ``gswa/`` folder
  (``gswa_plugin.save`` format) in every checkpoint, PEFT checkpoints that keep GSWA and the
  other non-LoRA trainable weights, and the diagnostics statistics in the trainer's logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gswa_plugin import api
from gswa_plugin import checkpoint as ckpt
from gswa_plugin.config import GSWAConfig, resolve_config
from gswa_plugin.errors import CheckpointError
from gswa_plugin.handle import MODULE_ATTR, get_handle, is_enabled
from gswa_plugin.integrations import unwrap, with_aux_loss
from gswa_plugin.integrations.transformers.callback import GSWADiagnosticsCallback
from gswa_plugin.integrations.transformers.checkpoints import (
    STAGING_DIR,
    checkpoint_problem,
    find_resume_checkpoint,
)
from gswa_plugin.integrations.transformers.freezing import is_gswa_parameter

logger = logging.getLogger(__name__)

#: Sub-folder of every checkpoint holding the GSWA weights alone (``gswa_plugin.load`` reads it).
GSWA_SUBDIR = "gswa"
#: With PEFT: the trainable weights outside LoRA (GSWA, a trained projector) of a checkpoint.
EXTRA_TRAINABLE_FILE = "non_lora_trainable.safetensors"
_PREFIX = MODULE_ATTR + "."


# --- reading gswa.* tensors from a checkpoint -------------------------------------------------
def _weight_files(path: Path) -> list[Path]:
    for index in ("model.safetensors.index.json",):
        f = path / index
        if f.is_file():
            shards = sorted(set(json.loads(f.read_text(encoding="utf-8"))["weight_map"].values()))
            return [path / s for s in shards]
    return sorted(path.glob("*.safetensors"))


def read_gswa_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``gswa.*`` tensors of a checkpoint directory (prefix removed); empty when it has none.

    Looks in the model's safetensors files (one file or an index with shards), then in a
    ``gswa/`` sub-folder written by [`GSWATrainer`][gswa_plugin.integrations.transformers.trainer.GSWATrainer] or
    ``gswa_plugin.save``.
    """
    p = Path(path)
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(p):
        if f.name in (ckpt.WEIGHTS_FILE, EXTRA_TRAINABLE_FILE):
            continue
        try:
            with safe_open(str(f), "pt") as sf:
                for key in sf.keys():  # noqa: SIM118 (safe_open is not iterable)
                    if key.startswith(_PREFIX):
                        state[key[len(_PREFIX) :]] = sf.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(
                f"{f} is not a readable safetensors file ({exc}); it is truncated or damaged: use another "
                "checkpoint, or restore the file"
            ) from exc
    if not state and (p / GSWA_SUBDIR / ckpt.WEIGHTS_FILE).is_file():
        return ckpt.read_weights(p / GSWA_SUBDIR / ckpt.WEIGHTS_FILE)
    bad = ckpt.non_finite(state)
    if bad:
        raise CheckpointError(
            f"{p}: the GSWA weights hold NaN or inf ({', '.join(bad[:5])}): the training that wrote them diverged or "
            "the file is damaged; use an earlier checkpoint"
        )
    return state


def saved_gswa_config(path: str | os.PathLike[str]) -> GSWAConfig | None:
    """The GSWA config stored with a checkpoint (``gswa/gswa_config.yaml`` or ``gswa_config.yaml``)."""
    for d in (Path(path) / GSWA_SUBDIR, Path(path)):
        if (d / ckpt.CONFIG_FILE).is_file():
            return GSWAConfig.from_yaml(d / ckpt.CONFIG_FILE)
    return None


@contextlib.contextmanager
def _ignore_gswa_keys(cls: type) -> Iterator[None]:
    """While loading, tell transformers that ``gswa.*`` keys are expected extras (they are
    loaded right after, into the enabled module), so it does not report them as unexpected."""
    before = cls.__dict__.get("_keys_to_ignore_on_load_unexpected", None)
    had = "_keys_to_ignore_on_load_unexpected" in cls.__dict__
    inherited = list(getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or [])
    cls._keys_to_ignore_on_load_unexpected = inherited + [r"^gswa\."]
    try:
        yield
    finally:
        if had:
            cls._keys_to_ignore_on_load_unexpected = before
        else:
            delattr(cls, "_keys_to_ignore_on_load_unexpected")


def model_class_for(path: str | os.PathLike[str]) -> type:
    """The image-text-to-text class transformers maps the checkpoint's config to."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    try:
        return AutoModelForImageTextToText._model_mapping[type(config)]
    except KeyError as exc:
        raise CheckpointError(
            f"{path}: transformers has no image-text-to-text class for model_type {config.model_type!r}; "
            "pass `model_class=` (for InternVL2 checkpoints in the released layout, convert them first with "
            "`gswa convert-internvl2`)"
        ) from exc


def from_pretrained_with_gswa(
    path: str | os.PathLike[str],
    gswa: GSWAConfig | dict[str, Any] | str | os.PathLike[str] | None = None,
    model_class: type | None = None,
    gswa_dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Load a host checkpoint and enable GSWA on it, with GSWA's weights where it has them.

    The host is loaded with ``from_pretrained`` (``kwargs`` pass through), GSWA is enabled
    (config: ``gswa`` if given, else the one saved with the checkpoint, else the defaults), and
    the checkpoint's ``gswa.*`` weights are loaded strictly into ``model.gswa``. A checkpoint
    without them (a base model) starts GSWA from its identity initialisation.

    Args:
        path: a checkpoint directory (``save_pretrained`` output, a Trainer checkpoint).
        gswa: the GSWA config; must fit the saved weights where there are any.
        model_class: the transformers class; default: the image-text-to-text class of the config.
        gswa_dtype: dtype of GSWA's parameters (e.g. ``torch.float32`` under a bf16 host, so that
            small updates are not rounded away); default: the host's.

    Raises:
        CheckpointError: the checkpoint's GSWA weights do not fit the config.
    """
    cls = model_class or model_class_for(path)
    with _ignore_gswa_keys(cls):
        model = cls.from_pretrained(path, **kwargs)
    state = read_gswa_state(path)
    cfg = resolve_config(gswa) if gswa is not None else saved_gswa_config(path)
    if cfg is None:
        if state:
            raise CheckpointError(
                f"{path} holds GSWA weights but no GSWA config ({GSWA_SUBDIR}/{ckpt.CONFIG_FILE}); pass `gswa=` with "
                "the settings it was trained with"
            )
        cfg = GSWAConfig()
    handle = api.enable(model, cfg)
    if gswa_dtype is not None:
        handle.module.to(gswa_dtype)
    if state:
        problems = ckpt.fit_problems(state, handle.module.state_dict())
        if problems:
            api.disable(model)
            raise CheckpointError(f"the GSWA weights in {path} do not fit the config: {'; '.join(problems)}")
        handle.module.load_state_dict(state, strict=True)
    return model


def extract_gswa(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], model: nn.Module | None = None
) -> Path:
    """Write the GSWA weights of a Trainer checkpoint in ``gswa_plugin.save`` format.

    With a model (GSWA enabled) this is ``gswa_plugin.save(model, out)``; without one, the
    checkpoint's ``gswa/`` folder (written by
    [`GSWATrainer`][gswa_plugin.integrations.transformers.trainer.GSWATrainer]) is copied.
    """
    if model is not None:
        return ckpt.save(unwrap(model), out)
    src = Path(checkpoint) / GSWA_SUBDIR
    if not (src / ckpt.WEIGHTS_FILE).is_file():
        raise CheckpointError(
            f"{checkpoint} has no {GSWA_SUBDIR}/{ckpt.WEIGHTS_FILE}; load it with `from_pretrained_with_gswa` "
            "and call `gswa_plugin.save(model, out)`"
        )
    ckpt.read_saved(src)  # check before copying: a damaged source must not replace a good copy
    ckpt.read_weights(src / ckpt.WEIGHTS_FILE)
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    for name in (ckpt.WEIGHTS_FILE, ckpt.CONFIG_FILE):
        data = (src / name).read_bytes()
        ckpt.atomic_write(dst / name, lambda p, data=data: p.write_bytes(data))
    return dst


def save_gswa_with_state(model: nn.Module, out: str | os.PathLike[str], state_dict: dict[str, Any] | None) -> Path:
    """``gswa_plugin.save``, but taking the tensors from a gathered ``state_dict`` where one is
    given (under DeepSpeed ZeRO-3 or FSDP the module's own parameters are shards)."""
    base = unwrap(model)
    gathered: dict[str, torch.Tensor] | None = None
    if state_dict:
        gathered = {}
        for key, value in state_dict.items():
            i = key.find(_PREFIX)
            if i >= 0 and (i == 0 or key[i - 1] == "."):
                gathered[key[i + len(_PREFIX) :]] = value.detach().contiguous().cpu()
        own = get_handle(base).module.state_dict()
        if not (gathered and set(gathered) == set(own) and all(gathered[k].shape == own[k].shape for k in own)):
            gathered = None  # not the gathered GSWA tensors: the module's own are complete
    return ckpt.save(base, out, state_dict=gathered)


# --- the trainer ------------------------------------------------------------------------------
def _trainer_base() -> type:
    from transformers import Trainer

    return Trainer


class GSWATrainer(_trainer_base()):  # type: ignore[misc]
    """``transformers.Trainer`` with GSWA's learning rate, checkpoints and statistics.

    Args:
        gswa_learning_rate: learning rate of the ``gswa.*`` parameters (``None``: the
            Trainer's ``learning_rate``). The learning-rate schedule scales it like the others.
        gswa_weight_decay: weight decay of the ``gswa.*`` parameters.
        processor: saved with every checkpoint (a processor the Trainer itself cannot save,
            such as one built without torchvision, is saved by components).
        *args, **kwargs: passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args: Any,
        gswa_learning_rate: float | None = None,
        gswa_weight_decay: float = 0.0,
        processor: Any = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.gswa_learning_rate = gswa_learning_rate
        self.gswa_weight_decay = gswa_weight_decay
        self.gswa_processor = processor
        #: Checkpoints ``train(resume_from_checkpoint=True)`` skipped, with the reason.
        self.gswa_skipped_checkpoints: list[tuple[Path, str]] = []
        self._gswa_staging: str | None = None

    # GSWA's own training terms (``distinct_weight``) join the task loss ------------------------
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
        """``Trainer.compute_loss`` plus [`gswa_plugin.aux_loss`][gswa_plugin.api.aux_loss] (0 unless
        the GSWA config sets ``distinct_weight``), scaled for gradient accumulation like the task loss."""
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        return with_aux_loss(self, model, out, return_outputs, kwargs.get("num_items_in_batch"))

    # resuming: the newest complete checkpoint --------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; ``resume_from_checkpoint=True`` (``gswa train --resume latest``) resumes
        from the newest *complete* checkpoint of ``output_dir`` and logs each newer one it skipped
        and why; an explicit checkpoint is checked the same way.

        Raises:
            CheckpointError: no complete checkpoint to resume from, or the one named is incomplete.
        """
        if resume_from_checkpoint is True:
            found, skipped = find_resume_checkpoint(self.args.output_dir)
            self.gswa_skipped_checkpoints = skipped
            for path, why in skipped:
                logger.warning("--resume latest: skipping %s: %s", path, why)
            if found is None:
                seen = "; ".join(f"{p.name}: {why}" for p, why in skipped) or "there is no checkpoint-N folder"
                raise CheckpointError(
                    f"--resume latest: no complete checkpoint in {self.args.output_dir} ({seen}); start without "
                    "--resume, or name a checkpoint with --resume PATH"
                )
            logger.warning("--resume latest: resuming from %s", found)
            resume_from_checkpoint = str(found)
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            why = checkpoint_problem(resume_from_checkpoint)
            if why is not None:
                raise CheckpointError(
                    f"cannot resume from {resume_from_checkpoint}: {why}; use an earlier checkpoint, or "
                    "`--resume latest` for the newest complete one"
                )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # atomic checkpoints: written under .gswa-incomplete/, checked, then renamed ----------------
    def _get_output_dir(self, trial: Any) -> str:
        if self._gswa_staging is not None:
            return self._gswa_staging
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Write ``checkpoint-N`` under ``output_dir/.gswa-incomplete/``, check it is complete, then
        rename it into ``output_dir``: a run killed while saving never leaves a half-written
        ``checkpoint-N`` (nor damages an earlier one)."""
        run_dir = Path(self._get_output_dir(trial))
        staging = run_dir / STAGING_DIR
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # interrupted writes of earlier runs
        self.accelerator.wait_for_everyone()
        self._gswa_staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._gswa_staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            src, final = staging / name, run_dir / name
            best = self.state.best_model_checkpoint
            if best is not None and Path(best).parent == staging:
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
                self.state.save_to_json(str(src / "trainer_state.json"))
            why = checkpoint_problem(src)
            if why is not None:
                raise CheckpointError(f"the checkpoint just written to {src} is incomplete: {why}")
            if final.exists():  # the same step saved again (e.g. after a resume): replace it
                old = staging / f"{name}.replaced"
                os.replace(final, old)
                os.replace(src, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(src, final)
            with contextlib.suppress(OSError):
                fd = os.open(run_dir, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            shutil.rmtree(staging, ignore_errors=True)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    # optimizer: GSWA's parameters in their own groups ------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        made_here = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if not made_here or self.gswa_learning_rate is None:
            return optimizer
        opt_model = self.model if model is None else model
        gswa_ids = {id(p) for n, p in opt_model.named_parameters() if is_gswa_parameter(n)}
        groups = []
        for group in optimizer.param_groups:
            rest = [p for p in group["params"] if id(p) not in gswa_ids]
            mine = [p for p in group["params"] if id(p) in gswa_ids]
            settings = {k: v for k, v in group.items() if k != "params"}
            if rest:
                groups.append({**settings, "params": rest})
            if mine:
                groups.append(
                    {**settings, "params": mine, "lr": self.gswa_learning_rate, "weight_decay": self.gswa_weight_decay}
                )
        # regroup in place (before any step there is no optimizer state to move)
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    # checkpoints -----------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        out = Path(output_dir if output_dir is not None else self.args.output_dir)
        base = unwrap(self.model)
        if is_enabled(base):
            save_gswa_with_state(base, out / GSWA_SUBDIR, state_dict)
        if hasattr(self.model, "get_base_model"):  # PEFT saves only the adapters: keep the rest that trains
            extra = {
                n: p.detach().contiguous().cpu()
                for n, p in base.named_parameters()
                if p.requires_grad and "lora_" not in n
            }
            if extra:
                ckpt.atomic_write(out / EXTRA_TRAINABLE_FILE, lambda p: save_file(extra, str(p)))
        if self.gswa_processor is not None:
            from gswa_plugin.hf import save_processor

            save_processor(self.gswa_processor, out)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = model if model is not None else self.model
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled or hasattr(target, "get_base_model")):
            self._load_host_and_gswa(resume_from_checkpoint, unwrap(target))
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        extra = Path(resume_from_checkpoint) / EXTRA_TRAINABLE_FILE
        if hasattr(target, "get_base_model") and extra.is_file():
            base = unwrap(target)
            _missing, unexpected = base.load_state_dict(load_file(str(extra)), strict=False)
            if unexpected:
                raise CheckpointError(
                    f"{extra} holds weights this model lacks: {', '.join(unexpected[:5])}; resume with the same recipe"
                )

    def _load_host_and_gswa(self, checkpoint: str, base: nn.Module) -> None:
        """Resume the host's weights through ``from_pretrained`` and GSWA's strictly.

        ``save_pretrained`` writes some hosts (InternVL among them in transformers 5.x) under
        their original checkpoint names, which the Trainer's plain ``load_state_dict`` does not
        map back: it would report every host weight missing and resume with the base weights.
        ``from_pretrained`` applies the key mapping, so trained host weights come back too.
        """
        from transformers import PreTrainedModel

        if not isinstance(base, PreTrainedModel):
            super()._load_from_checkpoint(checkpoint, model=base)
            return
        cls = type(base)
        with _ignore_gswa_keys(cls):
            loaded = cls.from_pretrained(
                checkpoint, dtype=base.dtype, attn_implementation=base.config._attn_implementation
            )
        missing, unexpected = base.load_state_dict(loaded.state_dict(), strict=False)
        del loaded
        missing = [k for k in missing if not k.startswith(_PREFIX)]
        if missing or unexpected:
            raise CheckpointError(
                f"resuming from {checkpoint}: the host weights do not fit the model "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]}); resume with the recipe that wrote it"
            )
        if is_enabled(base):
            state = read_gswa_state(checkpoint)
            if not state:
                raise CheckpointError(f"resuming from {checkpoint}: it holds no GSWA weights (`gswa.*` keys)")
            try:
                get_handle(base).module.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"resuming from {checkpoint}: the GSWA weights do not fit: {exc}") from exc

    # logging: the diagnostics' statistics join every log line ----------------------------------
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, GSWADiagnosticsCallback):
                logs.update(cb.latest)
        super().log(logs, *args, **kwargs)
