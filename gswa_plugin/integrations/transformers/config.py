"""The recipe file of ``gswa train``: YAML keys mapped 1:1 onto dataclasses, validated up front.

A recipe is one YAML file with these top-level keys (see ``recipes/internvl2-2b/transformers``)::

    host: transformers          # marks a recipe for this trainer
    model: {...}                # ModelSection
    data: {...}                 # DataSection
    freeze: gswa                # FREEZE_POLICIES
    gswa_learning_rate: 1.0e-4  # separate learning rate of GSWA's parameters
    lora: {...}                 # LoraSection (PEFT LoRA on the language model)
    diagnostics: {...}          # DiagnosticsSection (weight statistics and warnings)
    training_args: {...}        # any field of transformers.TrainingArguments
    gswa: {...}                 # the GSWA block (gswa_plugin.GSWAConfig)

Every problem in a recipe (unknown keys with a suggestion, wrong types, out-of-range values,
``training_args`` keys that TrainingArguments does not have, and the ``gswa:`` block's own
problems) is reported at once in one :class:`~gswa_plugin.errors.ConfigError`. Validation needs
no GPU and does not build the TrainingArguments (that would touch devices).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

from gswa_plugin.config import GSWAConfig, read_yaml, rule_problems
from gswa_plugin.errors import ConfigError
from gswa_plugin.tools.diagnostics import Thresholds

#: Value of the ``host:`` key that marks a recipe for this trainer.
HOST = "transformers"

#: Freezing policies: which parts of the model train (everything else is frozen).
FREEZE_POLICIES: dict[str, tuple[str, ...]] = {
    "gswa": ("gswa",),
    "gswa+projector": ("gswa", "projector"),
    "gswa+projector+language_model": ("gswa", "projector", "language_model"),
    "all": ("gswa", "projector", "language_model", "vision"),
}


def _f(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: copy.deepcopy(value), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class ModelSection:
    """Which model and processor to load, and how."""

    name_or_path: str = _f(
        "",
        "Directory (or hub id) of a transformers-native checkpoint, e.g. InternVL2-2B converted with "
        "`gswa convert-internvl2`. A Trainer checkpoint with `gswa.*` keys resumes GSWA's weights too.",
        required=True,
    )
    processor: str | None = _f(None, "Where the processor lives; empty: `name_or_path`.")
    dtype: str = _f(
        "bfloat16", "Dtype the weights are loaded in.", choices=("float32", "bfloat16", "float16", "auto")
    )
    attn_implementation: str | None = _f("sdpa", "Attention kernel (`eager`, `sdpa`, `flash_attention_2`).")
    max_patches: int | None = _f(
        None, "Maximum tiles per image of the image processor (InternVL2 trains with 12); empty: the processor's.",
        min=1,
    )
    min_patches: int | None = _f(None, "Minimum tiles per image; empty: the processor's.", min=1)
    gswa_dtype: str = _f(
        "float32",
        "Dtype of GSWA's own parameters; float32 keeps small updates from being rounded away under a bf16 host "
        "(`auto`: the host's dtype).",
        choices=("float32", "bfloat16", "float16", "auto"),
    )
    gswa_checkpoint: str | None = _f(
        None, "A directory written by `gswa_plugin.save` whose GSWA weights start the run (instead of identity)."
    )


@dataclass
class DataSection:
    """Conversation files and how they become model inputs."""

    train_files: list[str] = _f([], "JSON or JSONL files of conversations (LLaVA or OpenAI `messages` format).", required=True)
    eval_files: list[str] = _f([], "Optional evaluation files, same format.")
    image_root: str | None = _f(
        None, "Directory relative image paths resolve against; empty: the directory of each data file."
    )
    template: str = _f(
        "internlm2",
        "Chat format: `internlm2` (InternVL2's `<|im_start|>role ... <|im_end|>`), `plain` "
        "(`user : ... assistant : ... <eos>`), or `tokenizer` (the tokenizer's own chat template).",
        choices=("internlm2", "plain", "tokenizer"),
    )
    system_prompt: str | None = _f(None, "System message put before every conversation; empty: none.")
    max_length: int = _f(4096, "Longest sequence in tokens; longer records are truncated after their images.", min=8)
    on_missing_image: str = _f(
        "error", "A record whose image file is missing: `error` (stop, naming it) or `skip` (count and leave it out).",
        choices=("error", "skip"),
    )


@dataclass
class LoraSection:
    """PEFT LoRA on the language model (GSWA and the policy's other parts train in full)."""

    enabled: bool = _f(False, "Put LoRA adapters on the language model's linear layers.")
    r: int = _f(16, "LoRA rank.", min=1)
    alpha: int = _f(32, "LoRA alpha.", min=1)
    dropout: float = _f(0.05, "LoRA dropout.", min=0.0, max_exclusive=1.0)
    target_modules: list[str] = _f(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Names of the language model's linear layers that get adapters (matched inside the language model only).",
    )


@dataclass
class DiagnosticsSection:
    """Per-step weight statistics logged to the trainer's loggers, and failure warnings."""

    enabled: bool = _f(True, "Log `gswa/*` statistics and warn on failure signatures.")
    uniform_after_steps: int = _f(
        100, "Warn about uniform weights only after this many optimizer steps (GSWA starts uniform by design).", min=0
    )
    warn_every_steps: int = _f(50, "Repeat a warning at most this often (in optimizer steps).", min=1)
    uniform_entropy: float = _f(Thresholds.uniform_entropy, "Relative entropy at or above which weights count as uniform.")
    uniform_max_min: float = _f(Thresholds.uniform_max_min, "And max/min ratio at or below which.")
    tile_dominance_share: float = _f(
        Thresholds.tile_dominance_share, "Top-tile share excess at or above which one tile dominates."
    )
    thumbnail_ratio: float = _f(Thresholds.thumbnail_ratio, "Thumbnail/mean-tile weight ratio that counts as dominance.")
    min_grad_norm: float = _f(Thresholds.min_grad_norm, "GSWA gradient norm at or below which gradients count as vanished.")

    def thresholds(self) -> Thresholds:
        return Thresholds(
            uniform_entropy=self.uniform_entropy,
            uniform_max_min=self.uniform_max_min,
            tile_dominance_share=self.tile_dominance_share,
            thumbnail_ratio=self.thumbnail_ratio,
            min_grad_norm=self.min_grad_norm,
        )


@dataclass
class TrainConfig:
    """A whole recipe. Build it with :func:`load_recipe` (YAML + overrides) or :meth:`from_dict`."""

    host: str = _f(HOST, "Which trainer the recipe is for; this one reads `transformers`.", choices=(HOST,))
    model: ModelSection = _f(None, "The model section.")
    data: DataSection = _f(None, "The data section.")
    freeze: str = _f(
        "gswa",
        "What trains: `gswa` (GSWA only), `gswa+projector`, `gswa+projector+language_model`, or `all`.",
        choices=tuple(FREEZE_POLICIES),
    )
    gswa_learning_rate: float | None = _f(
        None, "Learning rate of GSWA's parameters; empty: `training_args.learning_rate`.", gt=0
    )
    gswa_weight_decay: float = _f(0.0, "Weight decay of GSWA's parameters.", min=0.0)
    lora: LoraSection = _f(None, "The LoRA section.")
    diagnostics: DiagnosticsSection = _f(None, "The diagnostics section.")
    training_args: dict[str, Any] = _f({}, "Keyword arguments of transformers.TrainingArguments.")
    gswa: dict[str, Any] = _f({}, "The GSWA block (see the configuration reference).")

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            if getattr(self, name) is None:
                setattr(self, name, cls())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> TrainConfig:
        """Validate ``data`` (a parsed recipe) and build the config; every problem is reported at once."""
        problems = validate_recipe(data)
        if problems:
            raise ConfigError(problems, source)
        sections = {name: sec(**(data.get(name) or {})) for name, sec in _SECTIONS.items()}
        rest = {k: v for k, v in data.items() if k not in _SECTIONS}
        rest["gswa"] = rest.get("gswa") or {}
        rest["training_args"] = rest.get("training_args") or {}
        return cls(**rest, **sections)

    def gswa_config(self) -> GSWAConfig:
        return GSWAConfig.from_dict(self.gswa)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "lora": LoraSection,
    "diagnostics": DiagnosticsSection,
}


# --- validation -------------------------------------------------------------------------------
def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return "a mapping"
    if args:
        return " or ".join(_type_name(a) for a in args)
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _unknown(key: str, valid: Sequence[str], where: str) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(valid)}"
    return f"unknown key `{where}{key}`{hint}"


def _check_fields(cls: type, data: Any, where: str, problems: list[str]) -> None:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"`{where.rstrip('.')}` must be a mapping, got {type(data).__name__}")
        return
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(_unknown(key, list(fields), where))
    for name, f in fields.items():
        meta = f.metadata
        if name in _SECTIONS and cls is TrainConfig:
            continue
        if name not in data:
            if meta.get("required"):
                problems.append(f"`{where}{name}` is required: {meta['help']}")
            continue
        value, tp = data[name], hints[name]
        if not _type_ok(value, tp):
            problems.append(f"`{where}{name}` must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
            continue
        if value is None:
            continue
        if meta.get("required") and value in ("", []):
            problems.append(f"`{where}{name}` is required: {meta['help']}")
        problems.extend(rule_problems(f"`{where}{name}`", value, meta))


def training_argument_names() -> list[str]:
    """Field names of ``transformers.TrainingArguments`` (what ``training_args:`` may hold)."""
    from transformers import TrainingArguments

    return [f.name for f in dataclasses.fields(TrainingArguments) if f.init]


def validate_recipe(data: Any) -> list[str]:
    """Every problem of a parsed recipe, as readable lines (empty when it is valid)."""
    problems: list[str] = []
    if not isinstance(data, dict):
        return [f"a recipe must be a mapping of keys, got {type(data).__name__}"]
    _check_fields(TrainConfig, data, "", problems)
    for name, cls in _SECTIONS.items():
        _check_fields(cls, data.get(name), f"{name}.", problems)
    args = data.get("training_args") or {}
    if isinstance(args, dict):
        valid = training_argument_names()
        for key in args:
            if key not in valid:
                problems.append(_unknown(key, valid, "training_args."))
        if not args.get("output_dir"):
            problems.append("`training_args.output_dir` is required: where checkpoints and the final model go")
    block = data.get("gswa")
    if isinstance(block, dict):
        try:
            GSWAConfig.from_dict(block)
        except ConfigError as exc:
            problems.extend(f"gswa: {p}" for p in exc.problems)
    lora = data.get("lora") or {}
    freeze = data.get("freeze", "gswa")
    if isinstance(lora, dict) and lora.get("enabled") and freeze in FREEZE_POLICIES:
        if "language_model" in FREEZE_POLICIES[freeze]:
            problems.append(
                f"`lora.enabled` with `freeze: {freeze}` would train the language model in full and through LoRA; "
                "use `freeze: gswa` or `freeze: gswa+projector` with LoRA (the adapters are what trains in the LM)"
            )
    return problems


# --- loading ----------------------------------------------------------------------------------
def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["training_args.max_steps=3", "gswa.variant=cosine"]`` -> dotted paths and YAML-parsed values."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"override {item!r} must look like `key=value` (dotted keys: `training_args.max_steps=3`)"])
        key, raw = item.split("=", 1)
        path = [p for p in key.strip().split(".") if p]
        if not path:
            raise ConfigError([f"override {item!r} has an empty key"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.append((path, value))
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``key=value`` overrides applied (dotted keys reach into sections)."""
    data = copy.deepcopy(data)
    for path, value in parse_overrides(overrides):
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


def read_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed YAML of a recipe file (no validation)."""
    data = read_yaml(path, "recipe file")
    return data if data is not None else {}


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a recipe, apply ``key=value`` overrides, validate everything at once.

    Raises:
        ConfigError: listing every problem of the recipe (after overrides).
    """
    data = apply_overrides(read_recipe(path), overrides)
    return TrainConfig.from_dict(data, source=str(path))


def is_training_recipe(data: Any, path: str | os.PathLike[str] | None = None) -> bool:
    """Whether a parsed YAML file is a recipe for this trainer (``host: transformers``)."""
    return isinstance(data, dict) and data.get("host") == HOST
