"""``gswa train --check``: everything a run needs from this machine, checked before any model loads.

[`preflight`][gswa_plugin.integrations.transformers.preflight.preflight] looks at what the recipe
names, not only at its shape (that is [`load_recipe`][gswa_plugin.integrations.transformers.config.load_recipe]):

* ``model.name_or_path`` (and ``model.processor``, ``model.gswa_checkpoint``): a checkpoint
  directory with ``config.json``, or a hub id that is cached (offline) or reachable (online);
* ``data.train_files`` / ``data.eval_files``: every file readable and parsed, every image found and
  decoded;
* ``training_args``: what ``TrainingArguments`` itself rejects on this machine (bf16 or fp16
  without a GPU that has it), the launcher's packages (DeepSpeed, the loggers in ``report_to``,
  the optimizer's), deprecated keys;
* ``training_args.output_dir`` writable; the checkpoint to resume found and complete.

Each problem names the recipe key to change. ``gswa train`` runs the same checks (images
decoded only with ``--check``) before it loads the model, so a run never starts into a failure
the preflight could have found.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from gswa_plugin.errors import ConfigError, DataError
from gswa_plugin.integrations.transformers.checkpoints import checkpoint_problem, find_resume_checkpoint
from gswa_plugin.integrations.transformers.config import TrainConfig

#: Environment variables that keep transformers and huggingface_hub off the network.
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: Packages ``training_args.report_to`` entries need (transformers fails at Trainer creation without them).
REPORTERS = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "clearml": ("clearml",),
    "neptune": ("neptune",),
    "trackio": ("trackio",),
}
#: Problems listed per key before the rest are counted.
MAX_PER_KEY = 10


class PreflightError(ConfigError):
    """A recipe is valid but cannot run here: what it names is missing, unreadable or unsupported.

    A [`ConfigError`][gswa_plugin.errors.ConfigError] (``problems`` holds one line per problem,
    each starting with the recipe key to change).
    """

    def __init__(self, problems: list[str], source: str | None = None):
        super().__init__(problems, source)
        where = f"recipe {source}" if source else "the recipe"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        self.args = (f"{where} cannot run on this machine ({len(self.problems)} problem(s)):\n{lines}",)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class PreflightReport:
    """What the preflight found: ``problems`` stop a run, ``notes`` do not.

    Attributes:
        problems: one line per problem, starting with the recipe key to change.
        notes: things worth knowing that do not stop the run (deprecated keys, skipped records).
        images: how many image files were checked.
        records: how many records were read.
    """

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: int = 0
    records: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self, source: str | None = None) -> None:
        """Raise [`PreflightError`][gswa_plugin.integrations.transformers.preflight.PreflightError] listing every
        problem."""
        if self.problems:
            raise PreflightError(self.problems, source)


def preflight(cfg: TrainConfig, resume: str | bool | None = None, decode_images: bool = True) -> PreflightReport:
    """Check what ``cfg`` names against this machine (see the module docstring).

    Args:
        cfg: a validated recipe.
        resume: what ``--resume`` gives: a checkpoint directory, ``True`` (``latest``) or ``None``
            (``training_args.resume_from_checkpoint`` then).
        decode_images: decode every image (``--check``); ``False`` only checks that the files exist.
    """
    report = PreflightReport()
    _check_model(cfg, report)
    _check_data(cfg, report, decode_images)
    _check_training_args(cfg, report)
    _check_output_dir(cfg, report)
    _check_resume(cfg, resume, report)
    return report


# --- model ------------------------------------------------------------------------------------
def _offline() -> list[str]:
    return [v for v in OFFLINE_VARS if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def model_source_problem(key: str, value: str) -> str | None:
    """Why ``value`` (a directory or hub id under recipe key ``key``) cannot be loaded, or ``None``."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and key != "model.processor":
            return f"`{key}`: {value} has no config.json; set it to a directory written by save_pretrained"
        return None
    if path.exists():
        return f"`{key}`: {value} is a file; set it to a checkpoint directory (save_pretrained) or a hub id"
    if _looks_like_path(value):
        return (
            f"`{key}`: no such directory {value}; set it to a checkpoint directory (save_pretrained, or "
            "`gswa convert-internvl2` for released InternVL2) or a hub id"
        )
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(value, "config.json"), str):
        return None
    offline = _offline()
    if offline:
        return (
            f"`{key}`: {value!r} is a hub id that is not in the local cache, and {', '.join(offline)} is set "
            "(offline); download it where there is network (`hf download ID`) and set the key to its directory, "
            "or unset the offline variable"
        )
    try:
        from huggingface_hub import model_info

        model_info(value, timeout=10)
    except Exception as exc:  # noqa: BLE001 - not found, gated, or no network: all stop the run
        first = " ".join(str(exc).split())[:200]
        return (
            f"`{key}`: hub id {value!r} cannot be reached ({type(exc).__name__}: {first}); set it to a local "
            "checkpoint directory, or check the id and the network (HF_HUB_OFFLINE=1 when there is none)"
        )
    return None


def _check_model(cfg: TrainConfig, report: PreflightReport) -> None:
    problem = model_source_problem("model.name_or_path", cfg.model.name_or_path)
    if problem:
        report.problems.append(problem)
    if cfg.model.processor:
        problem = model_source_problem("model.processor", cfg.model.processor)
        if problem:
            report.problems.append(problem)
    if cfg.model.gswa_checkpoint:
        from gswa_plugin import checkpoint as ckpt

        d = Path(cfg.model.gswa_checkpoint)
        missing = [f for f in (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE) if not (d / f).is_file()]
        if not d.is_dir() or missing:
            report.problems.append(
                f"`model.gswa_checkpoint`: {d} is not a saved GSWA directory (missing: "
                f"{', '.join(missing) if d.is_dir() else 'the directory'}); set it to what `gswa_plugin.save` wrote, "
                "or leave it empty to start GSWA from identity"
            )


# --- data -------------------------------------------------------------------------------------
def _check_data(cfg: TrainConfig, report: PreflightReport, decode_images: bool) -> None:
    from gswa_plugin.integrations.transformers.data import iter_raw_records, parse_record

    root_missing = cfg.data.image_root is not None and not Path(cfg.data.image_root).is_dir()
    if root_missing:
        report.problems.append(
            f"`data.image_root`: no such directory {cfg.data.image_root}; set it to the folder relative image "
            "paths start from, or leave it empty (each data file's folder)"
        )
    for key, files in (("data.train_files", cfg.data.train_files), ("data.eval_files", cfg.data.eval_files)):
        bad_images: list[str] = []
        for f in files:
            if not Path(f).is_file():
                report.problems.append(f"`{key}`: data file not found: {f}; fix the path (JSON or JSONL)")
                continue
            if root_missing:
                continue
            root = Path(cfg.data.image_root) if cfg.data.image_root is not None else Path(f).parent
            try:
                for where, obj in iter_raw_records(f):
                    report.records += 1
                    rec = parse_record(obj, where, root)
                    for image in rec.images:
                        report.images += 1
                        problem = _image_problem(image, decode_images)
                        if problem:
                            bad_images.append(f"{where}: {problem}")
            except DataError as exc:
                report.problems.append(f"`{key}`: {exc}")
        if not bad_images:
            continue
        if cfg.data.on_missing_image == "skip":
            report.notes.append(
                f"`{key}`: {len(bad_images)} record(s) with a missing or unreadable image will be skipped "
                f"(data.on_missing_image: skip); first: {bad_images[0]}"
            )
            continue
        for line in bad_images[:MAX_PER_KEY]:
            report.problems.append(f"`{key}`: {line}")
        if len(bad_images) > MAX_PER_KEY:
            report.problems.append(f"`{key}`: ... and {len(bad_images) - MAX_PER_KEY} more record(s) with bad images")
        report.problems.append(
            f"`data.image_root` / `{key}`: fix the image paths above, or set `data.on_missing_image: skip` to leave "
            "those records out"
        )


def _image_problem(path: Path, decode: bool) -> str | None:
    if not path.is_file():
        return f"image not found: {path}"
    if not decode:
        return None
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
    except Exception as exc:  # noqa: BLE001 - truncated, not an image, unsupported format
        return f"image {path} cannot be decoded ({type(exc).__name__}: {exc})"
    return None


# --- training arguments -----------------------------------------------------------------------
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_training_args(cfg: TrainConfig, report: PreflightReport) -> None:
    args = cfg.training_args
    use_cpu = bool(args.get("use_cpu"))
    cuda = _cuda()
    if args.get("bf16") and not use_cpu:
        import torch

        if not (cuda and torch.cuda.is_bf16_supported()):
            report.problems.append(
                "`training_args.bf16: true` needs a GPU with bfloat16 and this machine has "
                f"{'a GPU without it' if cuda else 'no CUDA GPU'}; set `training_args.bf16: false` (on CPU also "
                "`training_args.use_cpu: true`, and `model.dtype: float32` for speed), or run on a GPU"
            )
    if args.get("fp16") and not cuda and not use_cpu:
        report.problems.append(
            "`training_args.fp16: true` needs a GPU and this machine has no CUDA GPU; set `training_args.fp16: false`"
        )
    if args.get("deepspeed"):
        ds = args["deepspeed"]
        if isinstance(ds, str) and not Path(ds).is_file():
            report.problems.append(f"`training_args.deepspeed`: no such file {ds}; point it at a DeepSpeed JSON config")
        if importlib.util.find_spec("deepspeed") is None:
            report.problems.append(
                "`training_args.deepspeed` needs the deepspeed package: `pip install deepspeed`, or remove the key"
            )
    report_to = args.get("report_to")
    for name in [report_to] if isinstance(report_to, str) else list(report_to or []):
        packages = REPORTERS.get(str(name))
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            report.problems.append(
                f"`training_args.report_to: {name}` needs `pip install {packages[0]}`; install it, or set "
                "`training_args.report_to: none`"
            )
    optim = str(args.get("optim", ""))
    if ("bnb" in optim or "8bit" in optim) and importlib.util.find_spec("bitsandbytes") is None:
        report.problems.append(f"`training_args.optim: {optim}` needs `pip install bitsandbytes`, or another optimizer")
    if cfg.lora.enabled and importlib.util.find_spec("peft") is None:
        report.problems.append("`lora.enabled: true` needs PEFT: `pip install 'gswa-plugin[train]'`")
    _construct_training_arguments(cfg, report)


def _construct_training_arguments(cfg: TrainConfig, report: PreflightReport) -> None:
    """Build ``TrainingArguments`` as the run will: its own errors become problems, its deprecation
    warnings notes naming the new key."""
    if any(p.startswith("`training_args.") for p in report.problems):
        return  # already explained in the recipe's terms
    from transformers import TrainingArguments

    from gswa_plugin.integrations.transformers.config import training_argument_names

    names = set(training_argument_names())
    kwargs = {"remove_unused_columns": False, **{k: v for k, v in cfg.training_args.items() if k in names}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            TrainingArguments(**kwargs)
        except (ValueError, TypeError, ImportError) as exc:
            report.problems.append(f"`training_args`: transformers rejects them: {' '.join(str(exc).split())}")
    for w in caught:
        text = str(w.message)
        m = re.search(r"`(\w+)` is deprecated.*?Use `(\w+)` instead", text)
        if m:
            report.notes.append(f"`training_args.{m.group(1)}` is deprecated in transformers: rename it `{m.group(2)}`")


# --- output and resume ------------------------------------------------------------------------
def _check_output_dir(cfg: TrainConfig, report: PreflightReport) -> None:
    out = Path(str(cfg.training_args.get("output_dir", ""))).expanduser()
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        report.problems.append(f"`training_args.output_dir`: {existing} is a file; set a directory")
        return
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".gswa-preflight-"):
            pass
    except OSError as exc:
        report.problems.append(
            f"`training_args.output_dir`: {out} is not writable ({exc.strerror or exc}: {existing}); set a directory "
            "you can write to"
        )


def _check_resume(cfg: TrainConfig, resume: str | bool | None, report: PreflightReport) -> None:
    """The checkpoint to resume exists and is complete; ``latest`` is the newest complete one
    (newer incomplete ones are skipped with a note, as the real run does)."""
    key = "--resume"
    if resume is None:
        resume = cfg.training_args.get("resume_from_checkpoint")
        key = "training_args.resume_from_checkpoint"
    if resume in (None, False, ""):
        return
    out = Path(str(cfg.training_args.get("output_dir", "")))
    if resume is True or str(resume).lower() in ("true", "latest"):
        found, skipped = find_resume_checkpoint(out)
        for path, why in skipped:
            report.notes.append(f"`{key}`: skipping {path.name}: {why}")
        if found is None:
            report.problems.append(
                f"`{key}` asks for the latest checkpoint but {out} holds no complete checkpoint-N directory"
                + (f" ({len(skipped)} incomplete, listed in the notes)" if skipped else "")
                + f"; leave `{key}` out to start from the beginning, or set `training_args.output_dir` to the run's folder"
            )
        return
    problem = checkpoint_problem(Path(str(resume)))
    if problem:
        report.problems.append(
            f"`{key}`: {resume} cannot be resumed from: {problem}; give a complete checkpoint-N directory or `latest`"
        )


def describe(report: PreflightReport) -> str:
    """One summary line of a passed preflight."""
    return f"{report.records} record(s), {report.images} image(s) checked"


__all__ = ["PreflightError", "PreflightReport", "describe", "model_source_problem", "preflight"]
