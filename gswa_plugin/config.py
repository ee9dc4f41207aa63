"""`GSWAConfig`: every knob of GSWA, loaded from YAML or a dict and validated up front.

A YAML file holds the settings under a top-level ``gswa:`` block, so the block can sit inside a
host framework's own YAML next to its keys. Every problem in a config is reported at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gswa_plugin.errors import ConfigError

#: Where the settings live in a YAML file or a nested dict.
BLOCK_KEY = "gswa"


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field whose metadata carries its documentation and validation rules."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class GSWAConfig:
    """Settings of the Global Semantic-guided Weight Allocator.

    Every field maps 1:1 to a key of the ``gswa:`` block in YAML. See the configuration
    reference in the docs (generated from this class).
    """

    adapter: str | None = _f(
        None,
        "Name of the adapter to use (see `gswa adapters`). Empty: chosen from the model.",
    )
    declare: dict | None = _f(
        None,
        "With `adapter: declarative`: the description of a host without a built-in adapter (seam, "
        "features, global view, summary, where to apply, tiles per image). See the docs page 'Adapters'.",
    )
    variant: str = _f(
        "self_attn",
        "Weighting variant: `self_attn` (the paper's, tiles and thumbnail interact through "
        "transformer blocks), `cross_attn` (the thumbnail attends to the tiles, no tile-tile "
        "blocks), `cosine` (training-free: softmax of cosine similarity to the thumbnail), or a "
        "variant registered by a plugin.",
    )
    mode: str = _f(
        "embed",
        "Where the weights act. `embed`: multiply each tile's image embeddings after the "
        "projector (the paper's; a pre-norm language model largely normalises it away). `value`: "
        "multiply the value vectors of the tile's tokens in the language model's self-attention "
        "(any attention kernel). `attn_bias`: add log(w) to the attention logits of the tile's "
        "keys (`eager`/`sdpa` attention). See the docs page 'Application modes'.",
        choices=("embed", "value", "attn_bias"),
    )
    mode_layers: int | None = _f(
        None,
        "`value`/`attn_bias` modes: act in the first this-many decoder layers of the language model "
        "(empty: all layers).",
        min=1,
    )
    hidden_size: int = _f(768, "Width GSWA maps the summaries to before its blocks.", min=1)
    num_layers: int = _f(
        1, "Number of pre-norm transformer blocks before the scoring layer (`self_attn`, `cross_attn`).", min=0
    )
    num_heads: int = _f(8, "Attention heads in the blocks and the scoring layer; must divide `hidden_size`.", min=1)
    mlp_ratio: float = _f(2.0, "MLP width of each block as a multiple of `hidden_size`.", gt=0)
    dropout: float = _f(0.0, "Dropout inside the GSWA blocks while training.", min=0.0, max_exclusive=1.0)
    temperature: float = _f(
        1.0, "Divides the attention scores before the softmax; below 1 sharpens the weights.", gt=0
    )
    cosine_temperature: float = _f(
        0.1, "Temperature of the `cosine` variant: `a = softmax(cos(g, s_i) / cosine_temperature)`.", gt=0
    )
    min_weight: float = _f(
        0.0,
        "Floor on every tile weight, applied by mixing with uniform weights "
        "(`w = w + min_weight * (1 - w)`), which keeps the mean at 1.",
        min=0.0,
        max_exclusive=1.0,
    )
    global_weight: float = _f(1.0, "Weight of the global thumbnail's tokens (1 leaves them unchanged).", gt=0)
    summary: str = _f(
        "auto",
        "Per-tile summary fed to GSWA: `cls` (the encoder's CLS token), `mean` (mean of the "
        "tile's tokens) or `auto` (CLS where the encoder has one, else the mean).",
        choices=("auto", "cls", "mean"),
    )
    identity_init: bool = _f(
        True,
        "Initialise the scoring layer so that attention is uniform: an untrained GSWA changes no output bit.",
    )
    seed: int = _f(
        0,
        "Seed of GSWA's own random generator for its initial parameters (the global random stream is left untouched).",
        min=0,
    )

    def __post_init__(self) -> None:
        problems = _validate(dataclasses.asdict(self))
        if problems:
            raise ConfigError(problems)

    # --- constructors -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str | None = None) -> GSWAConfig:
        """Build a config from a dict, either the block itself or a dict holding a ``gswa:`` block.

        Raises:
            ConfigError: listing every unknown key, wrong type and out-of-range value at once.
        """
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError([f"expected a mapping of settings, got {type(data).__name__}"], source)
        if BLOCK_KEY in data:
            data = data[BLOCK_KEY]
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise ConfigError([f"the `{BLOCK_KEY}:` block must be a mapping, got {type(data).__name__}"], source)
        problems = _validate(data, partial=True)
        if problems:
            raise ConfigError(problems, source)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> GSWAConfig:
        """Read the top-level ``gswa:`` block of a YAML file (other top-level keys are ignored)."""
        path = Path(path)
        data = read_yaml(path)
        if not isinstance(data, dict) or BLOCK_KEY not in data:
            raise ConfigError(
                [f"no top-level `{BLOCK_KEY}:` block; put the GSWA settings under `{BLOCK_KEY}:`"], str(path)
            )
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (the content of a ``gswa:`` block)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The settings as YAML text with a top-level ``gswa:`` block."""
        return yaml.safe_dump({BLOCK_KEY: self.to_dict()}, sort_keys=False)

    def replace(self, **changes: Any) -> GSWAConfig:
        """A copy with some fields changed (validated like any config)."""
        return GSWAConfig.from_dict({**self.to_dict(), **changes})


def read_yaml(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Parse a YAML file; a missing file or bad YAML is a :class:`ConfigError` naming the path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"{what} not found: {p}"], str(p))
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(p)) from exc


def default_config_path() -> Path:
    """The packaged default YAML (used by ``gswa demo``)."""
    return Path(str(resources.files("gswa_plugin") / "default.yaml"))


def resolve_config(config: GSWAConfig | dict[str, Any] | str | os.PathLike[str] | None) -> GSWAConfig:
    """Turn what a user passed (a config, a dict, a YAML path or ``None``) into a `GSWAConfig`."""
    if config is None:
        return GSWAConfig()
    if isinstance(config, GSWAConfig):
        return config
    if isinstance(config, dict):
        return GSWAConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return GSWAConfig.from_yaml(config)
    raise ConfigError(
        [f"config must be a GSWAConfig, a dict or a path to a YAML file, got {type(config).__name__}"]
    )


# --- validation -----------------------------------------------------------------------------
def field_docs() -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of every config field, for docs and the CLI."""
    hints = typing.get_type_hints(GSWAConfig)
    out = []
    for f in dataclasses.fields(GSWAConfig):
        out.append((f.name, _type_name(hints[f.name]), f.default, f.metadata["help"]))
    return out


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " | ".join(_type_name(a) for a in args)
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_type(value: Any, tp: Any) -> bool:
    args = typing.get_args(tp)
    if args:  # a union
        return any(_check_type(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def rule_problems(label: str, value: Any, meta: Any) -> list[str]:
    """Problems of a well-typed ``value`` against the rules in a field's metadata
    (``choices``, ``min``, ``gt``, ``max_exclusive``); ``label`` names the field in the messages."""
    problems = []
    if "choices" in meta and value not in meta["choices"]:
        problems.append(f"{label} must be one of {', '.join(map(repr, meta['choices']))}; got {value!r}")
    if "min" in meta and value < meta["min"]:
        problems.append(f"{label} must be >= {meta['min']}, got {value!r}")
    if "gt" in meta and value <= meta["gt"]:
        problems.append(f"{label} must be > {meta['gt']}, got {value!r}")
    if "max_exclusive" in meta and value >= meta["max_exclusive"]:
        problems.append(f"{label} must be < {meta['max_exclusive']}, got {value!r}")
    return problems


def _validate(data: dict[str, Any], partial: bool = False) -> list[str]:
    """Every problem of a (possibly partial) settings dict, as readable lines."""
    hints = typing.get_type_hints(GSWAConfig)
    fields = {f.name: f for f in dataclasses.fields(GSWAConfig)}
    problems: list[str] = []
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(fields)}"
            problems.append(f"unknown key `{key}`{hint}")
    for name, value in data.items():
        if name not in fields:
            continue
        meta = fields[name].metadata
        tp = hints[name]
        if not _check_type(value, tp):
            problems.append(f"`{name}` must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
            continue
        if value is None:
            continue
        problems.extend(rule_problems(f"`{name}`", value, meta))
    hidden = data.get("hidden_size", fields["hidden_size"].default)
    heads = data.get("num_heads", fields["num_heads"].default)
    if (
        _check_type(hidden, int)
        and _check_type(heads, int)
        and heads > 0
        and hidden > 0
        and hidden % heads
    ):
        problems.append(f"`num_heads` ({heads}) must divide `hidden_size` ({hidden})")
    return problems
