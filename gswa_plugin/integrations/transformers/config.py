"""The recipe file of ``gswa train``: YAML keys mapped 1:1 onto settings models, validated up front.

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

The sections are [`Settings`][gswa_plugin.schema.Settings], the same mechanism as the GSWA block:
every problem in a recipe (unknown keys with a suggestion, wrong types, out-of-range values,
``training_args`` keys that TrainingArguments does not have, and the ``gswa:`` block's own and
registry problems) is reported at once in one [`ConfigError`][gswa_plugin.errors.ConfigError], and
``gswa schema recipe`` exports the JSON Schema. Validation needs no GPU and does not build the
TrainingArguments (that would touch devices).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Literal, Sequence

import yaml
from pydantic import Field

from gswa_plugin.config import GSWAConfig, read_yaml
from gswa_plugin.errors import ConfigError
from gswa_plugin.plugins import config_problems
from gswa_plugin.schema import Settings, unknown_key
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
FreezePolicy = Literal["gswa", "gswa+projector", "gswa+projector+language_model", "all"]
Dtype = Literal["float32", "bfloat16", "float16", "auto"]


class ModelSection(Settings):
    """Which model and processor to load, and how."""

    name_or_path: str = Field(
        min_length=1,
        description="Directory (or hub id) of a transformers-native checkpoint, e.g. InternVL2-2B converted with "
        "`gswa convert-internvl2`. A Trainer checkpoint with `gswa.*` keys resumes GSWA's weights too.",
    )
    processor: str | None = Field(None, description="Where the processor lives; empty: `name_or_path`.")
    dtype: Dtype = Field("bfloat16", description="Dtype the weights are loaded in.")
    attn_implementation: str | None = Field("sdpa", description="Attention kernel (`eager`, `sdpa`, `flash_attention_2`).")
    max_patches: int | None = Field(
        None, ge=1, description="Maximum tiles per image of the image processor (InternVL2 trains with 12); empty: "
        "the processor's."
    )
    min_patches: int | None = Field(None, ge=1, description="Minimum tiles per image; empty: the processor's.")
    gswa_dtype: Dtype = Field(
        "float32",
        description="Dtype of GSWA's own parameters; float32 keeps small updates from being rounded away under a "
        "bf16 host (`auto`: the host's dtype).",
    )
    gswa_checkpoint: str | None = Field(
        None, description="A directory written by `gswa_plugin.save` whose GSWA weights start the run (instead of "
        "identity)."
    )


class DataSection(Settings):
    """Conversation files and how they become model inputs."""

    train_files: list[str] = Field(
        min_length=1, description="JSON or JSONL files of conversations (LLaVA or OpenAI `messages` format)."
    )
    eval_files: list[str] = Field(default_factory=list, description="Optional evaluation files, same format.")
    image_root: str | None = Field(
        None, description="Directory relative image paths resolve against; empty: the directory of each data file."
    )
    template: Literal["internlm2", "plain", "tokenizer"] = Field(
        "internlm2",
        description="Chat format: `internlm2` (InternVL2's `<|im_start|>role ... <|im_end|>`), `plain` "
        "(`user : ... assistant : ... <eos>`), or `tokenizer` (the tokenizer's own chat template).",
    )
    system_prompt: str | None = Field(None, description="System message put before every conversation; empty: none.")
    max_length: int = Field(
        4096, ge=8, description="Longest sequence in tokens; longer records are truncated after their images."
    )
    on_missing_image: Literal["error", "skip"] = Field(
        "error",
        description="A record whose image file is missing: `error` (stop, naming it) or `skip` (count and leave it out).",
    )


class LoraSection(Settings):
    """PEFT LoRA on the language model (GSWA and the policy's other parts train in full)."""

    enabled: bool = Field(False, description="Put LoRA adapters on the language model's linear layers.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Names of the language model's linear layers that get adapters (matched inside the language "
        "model only).",
    )


class DiagnosticsSection(Settings):
    """Per-step weight statistics logged to the trainer's loggers, and failure warnings."""

    enabled: bool = Field(True, description="Log `gswa/*` statistics and warn on failure signatures.")
    uniform_after_steps: int = Field(
        100, ge=0, description="Warn about uniform weights only after this many optimizer steps (GSWA starts uniform "
        "by design)."
    )
    warn_every_steps: int = Field(50, ge=1, description="Repeat a warning at most this often (in optimizer steps).")
    uniform_entropy: float = Field(
        Thresholds.uniform_entropy, description="Relative entropy at or above which weights count as uniform."
    )
    uniform_max_min: float = Field(Thresholds.uniform_max_min, description="And max/min ratio at or below which.")
    tile_dominance_share: float = Field(
        Thresholds.tile_dominance_share, description="Top-tile share excess at or above which one tile dominates."
    )
    thumbnail_ratio: float = Field(
        Thresholds.thumbnail_ratio, description="Thumbnail/mean-tile weight ratio that counts as dominance."
    )
    min_grad_norm: float = Field(
        Thresholds.min_grad_norm, description="GSWA gradient norm at or below which gradients count as vanished."
    )

    def thresholds(self) -> Thresholds:
        return Thresholds(
            uniform_entropy=self.uniform_entropy,
            uniform_max_min=self.uniform_max_min,
            tile_dominance_share=self.tile_dominance_share,
            thumbnail_ratio=self.thumbnail_ratio,
            min_grad_norm=self.min_grad_norm,
        )


class TrainConfig(Settings):
    """A whole recipe. Build it with [`load_recipe`][gswa_plugin.integrations.transformers.config.load_recipe] (YAML +
    overrides) or ``from_dict``."""

    host: Literal["transformers"] = Field(HOST, description="Which trainer the recipe is for; this one reads `transformers`.")
    model: ModelSection = Field(description="The model section.")
    data: DataSection = Field(description="The data section.")
    freeze: FreezePolicy = Field(
        "gswa",
        description="What trains: `gswa` (GSWA only), `gswa+projector`, `gswa+projector+language_model`, or `all`.",
    )
    gswa_learning_rate: float | None = Field(
        None, gt=0, description="Learning rate of GSWA's parameters; empty: `training_args.learning_rate`."
    )
    gswa_weight_decay: float = Field(0.0, ge=0.0, description="Weight decay of GSWA's parameters.")
    lora: LoraSection = Field(default_factory=LoraSection, description="The LoRA section.")
    diagnostics: DiagnosticsSection = Field(default_factory=DiagnosticsSection, description="The diagnostics section.")
    training_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of transformers.TrainingArguments (`output_dir` required)."
    )
    gswa: GSWAConfig | None = Field(
        None,
        description="The GSWA block (see the configuration reference); empty: the config saved with the "
        "checkpoint, else the defaults.",
    )

    @classmethod
    def rules(cls, data: dict[str, Any], where: str) -> list[str]:
        problems = []
        args = data.get("training_args")
        if isinstance(args, dict):
            valid = training_argument_names()
            problems += [unknown_key(key, valid, f"{where}training_args.") for key in args if key not in valid]
        if not isinstance(args, dict) or not args.get("output_dir"):
            problems.append(f"`{where}training_args.output_dir` is required: where checkpoints and the final model go")
        lora, freeze = data.get("lora") or {}, data.get("freeze", "gswa")
        if isinstance(lora, dict) and lora.get("enabled") is True and "language_model" in FREEZE_POLICIES.get(freeze, ()):
            problems.append(
                f"`{where}lora.enabled` with `freeze: {freeze}` would train the language model in full and through "
                "LoRA; use `freeze: gswa` or `freeze: gswa+projector` with LoRA (the adapters are what trains in the LM)"
            )
        return problems

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> TrainConfig:
        """Validate ``data`` (a parsed recipe) and build the config; every problem is reported at once."""
        problems = validate_recipe(data)
        if problems:
            raise ConfigError(problems, source)
        return cls.parse(data, source)

    def gswa_config(self) -> GSWAConfig:
        """The recipe's GSWA config (the defaults where the recipe has no ``gswa:`` block)."""
        return self.gswa if self.gswa is not None else GSWAConfig()

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump(by_alias=True, exclude={"gswa"})
        out["gswa"] = None if self.gswa is None else self.gswa.to_dict()
        return out


def training_argument_names() -> list[str]:
    """Field names of ``transformers.TrainingArguments`` (what ``training_args:`` may hold)."""
    from transformers import TrainingArguments

    return [f.name for f in dataclasses.fields(TrainingArguments) if f.init]


def validate_recipe(data: Any) -> list[str]:
    """Every problem of a parsed recipe, as readable lines (empty when it is valid): the schema's,
    and the registry's for its ``gswa:`` block (variant and adapter names)."""
    problems: list[str] = []
    try:
        TrainConfig.parse(data)
    except ConfigError as exc:
        problems += exc.problems
    block = data.get("gswa") if isinstance(data, dict) else None
    if isinstance(block, dict):
        problems += config_problems(block, where="gswa.")
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
