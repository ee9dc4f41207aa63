"""`GSWAConfig`: every knob of GSWA, loaded from YAML or a dict and validated up front.

A YAML file holds the settings under a top-level ``gswa:`` block, so the block can sit inside a
host framework's own YAML next to its keys. Every problem in a config is reported at once (see
[`gswa_plugin.schema`][gswa_plugin.schema]). This module checks the config's own fields only; the names that
installed plugins register (``variant``, ``adapter``) are checked by
[`gswa_plugin.plugins.check_config`][gswa_plugin.plugins.check_config], which ``enable()``, ``gswa check`` and recipe
validation call.
"""

from __future__ import annotations

import os
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from gswa_plugin.errors import ConfigError
from gswa_plugin.schema import DottedPath, Name, PositiveInt, Settings, closest, is_int

#: Where the settings live in a YAML file or a nested dict.
BLOCK_KEY = "gswa"

#: Where the weights act; see [`gswa_plugin.apply`][gswa_plugin.apply] and the docs page 'Application modes'.
Mode = Literal["embed", "value", "attn_bias"]
#: Every application mode, in the order the docs present them.
MODES: tuple[str, ...] = typing.get_args(Mode)
#: The built-in weighting variants (plugins may register more).
BUILTIN_VARIANT_NAMES: tuple[str, ...] = ("self_attn", "cross_attn", "cosine", "text_guided", "text_cross_attn")
#: Name of the adapter that reads ``declare:``.
DECLARATIVE = "declarative"

IdOrConfigKey = typing.Annotated[
    int | DottedPath, Field(union_mode="left_to_right")
]


# --- the `declare:` block of the declarative adapter -------------------------------------------------
class MatchSpec(Settings):
    """Which models the declaration describes; checked against the model at ``enable()``."""

    model_type: str | list[str] | None = Field(
        None, description="`config.model_type` of the models described (a name or a list of names)."
    )
    class_: str | list[str] | None = Field(
        None, alias="class", description="Class name of the models described (a name or a list of names)."
    )

    @classmethod
    def rules(cls, data: dict[str, Any], where: str) -> list[str]:
        if not any(data.get(k) for k in ("model_type", "class")):
            return [f"`{where.rstrip('.')}` needs `model_type` and/or `class` naming the models it describes"]
        return []


class SummarySpec(Settings):
    """Where each view's summary comes from."""

    from_: Literal["features", "module"] = Field(
        "features",
        alias="from",
        description="`features`: the mean of each view's tokens at the seam. `module`: read from the output of "
        "the submodule `module` during the seam call (the default when `module` is given).",
    )
    module: DottedPath | None = Field(None, description="With `from: module`: dotted path of the submodule.")
    output: int | Name = Field(
        "last_hidden_state",
        description="Where the summarised tokens are in the module's output: an attribute name, an integer "
        "index into a tuple, or `return` (the output itself).",
    )
    token: int | Literal["mean", "cls"] = Field(
        "mean", description="`mean` of the tokens, `cls` (token 0), or an integer token index."
    )
    channels: Literal["last", "first"] = Field(
        "last", description="`last`: `[views, tokens, dim]`; `first`: feature maps `[views, dim, ...]`."
    )
    dim: PositiveInt | DottedPath | None = Field(
        None,
        description="Summary width: an integer or a dotted path into `model.config` (default "
        "`vision_config.hidden_size` with `from: module`, else `text_config.hidden_size`).",
    )
    layer: int | None = Field(None, description="With `output: hidden_states`: the index of the layer.")

    @classmethod
    def rules(cls, data: dict[str, Any], where: str) -> list[str]:
        problems = []
        source = data.get("from", "module" if "module" in data else "features")
        if source == "module" and data.get("module") is None:
            problems.append(f"`{where}module` (dotted path of a submodule) is required with `from: module`")
        if source == "features" and data.get("module") is not None and "from" in data:
            problems.append(f"`{where}module` is only read with `from: module`")
        if data.get("channels") == "first" and data.get("token", "mean") != "mean":
            problems.append(f"`{where}token` must be `mean` with `channels: first` (feature maps have no token order)")
        return problems

    def model_post_init(self, context: Any) -> None:
        if self.module is not None and "from_" not in self.model_fields_set:
            object.__setattr__(self, "from_", "module")


class TilesSpec(Settings):
    """How many views each image has, read off `input_ids`."""

    group: Literal["run", "start_token", "global_marker", "joined_views", "fixed"] = Field(
        "run",
        description="`run`: each contiguous run of placeholders is one image (InternVL, GOT-OCR2). `start_token`: "
        "each image opens with `start_token`. `global_marker`: each view is its own run and the global view's "
        "run, preceded by `marker_token`, closes the image (Idefics3, Aya Vision). `joined_views`: each view is "
        "its own run and the views of one image are separated only by `joiner_tokens` (Gemma 3 pan-and-scan). "
        "`fixed`: `views_per_image` views for every image.",
    )
    token: IdOrConfigKey | None = Field(
        None, description="The image placeholder: an integer id or a `model.config` attribute (`image_token_id`)."
    )
    tokens_per_view: PositiveInt | Literal["auto"] | None = Field(
        None, description="Placeholders per view (default `auto`: the tokens per view at the seam)."
    )
    start_token: IdOrConfigKey | None = Field(
        None, description="With `group: start_token`: the token opening each image (id or config attribute)."
    )
    marker_token: IdOrConfigKey | Literal["auto"] = Field(
        "auto",
        description="With `group: global_marker`: the token before the global view's run (id, config attribute, "
        "or `auto`: the token before the batch's last run).",
    )
    views_per_image: PositiveInt | None = Field(None, description="With `group: fixed`: views of every image.")
    joiner_tokens: list[IdOrConfigKey] | None = Field(
        None,
        description="With `group: joined_views`: every token the processor writes between two views of one image "
        "(ids or config attributes: the end and start tokens of a view, newlines, the words of its fixed "
        "sentence). Any other token between two views starts a new image.",
    )
    expect_tiles: bool = Field(
        True,
        description="Check the first batch with images: when every image comes out with one view although the "
        "batch holds several, the grouping is taken to be wrong and an error names this block. Set `false` for "
        "data whose images are never tiled.",
    )

    @classmethod
    def rules(cls, data: dict[str, Any], where: str) -> list[str]:
        problems = []
        group = data.get("group", "run")
        if group != "fixed" and data.get("token") is None:
            problems.append(f"`{where}token` (placeholder id or model.config attribute) is required")
        if group == "start_token" and data.get("start_token") is None:
            problems.append(f"`{where}start_token` (id or model.config attribute) is required with `group: start_token`")
        if group == "fixed" and data.get("views_per_image") is None:
            problems.append(f"`{where}views_per_image` (a positive integer) is required with `group: fixed`")
        if group == "joined_views" and not data.get("joiner_tokens"):
            problems.append(
                f"`{where}joiner_tokens` (the ids the processor writes between two views of one image) is required "
                "with `group: joined_views`"
            )
        if group != "joined_views" and data.get("joiner_tokens") is not None:
            problems.append(f"`{where}joiner_tokens` is only read with `group: joined_views`")
        return problems


class HostDeclaration(Settings):
    """The ``declare:`` block: a tiling host described in YAML for ``adapter: declarative``.

    See the docs page 'Adapters' for worked examples.
    """

    match: MatchSpec = Field(
        description="Which models this describes: `{model_type: <name or list>}` and/or `{class: <name or list>}`."
    )
    seam: DottedPath = Field(
        description="Dotted path, from the model, of the method (not a module) whose output holds every view's "
        "features (`model.get_image_features`). It is wrapped on this instance only, keeping its signature "
        "(`generate()` reads it)."
    )
    features: int | Name = Field(
        "pooler_output",
        description="Where the views are in the seam's output: an attribute name, an integer index into a "
        "tuple, or `return` (the output itself). `[views, tokens, dim]`, a list of such tensors, a list of "
        "flat `[views_i * tokens, dim]` blocks (needs `tiles_from.tokens_per_view`), or more dimensions "
        "(needs `features_layout`).",
    )
    features_layout: list[Literal["views", "tokens", "dim"]] | None = Field(
        None,
        description="For features of more than three dimensions: the role of each axis of the feature tensor, "
        "in order: one or more `views` axes, then one or more `tokens` axes, then `dim` (e.g. `[views, tokens, "
        "tokens, dim]` for `[views, h, w, dim]`, `[views, views, views, tokens, dim]` for `[batch, images, "
        "tiles, patches, dim]`). The adapter reshapes the features to `[views, tokens, dim]` (the views in "
        "row-major order) for weighting and back to their shape for the host. Empty: `[views, tokens, dim]`.",
    )
    global_view: Literal["first", "last", "none"] = Field(
        description="Where each multi-view image's whole-image view sits among its views; `none`: tiles only (the "
        "mean of the tiles stands in for the global summary)."
    )
    summary: SummarySpec = Field(default_factory=SummarySpec, description="Where each view's summary comes from.")
    apply: Literal["after_projector", "before_projector"] = Field(
        "after_projector",
        description="`after_projector`: scale the seam's output. `before_projector`: scale the input of "
        "`projector` (a projector that opens with a norm cancels that scale).",
    )
    projector: DottedPath | None = Field(
        None,
        description="With `apply: before_projector`: dotted path of the projector module whose input is scaled (it "
        "must run inside the seam call). Only for norm-free projectors: one that opens with a norm (InternVL, Aya "
        "Vision, LLaVA-OneVision) divides the scale out.",
    )
    tiles_from: TilesSpec | None = Field(
        None,
        description="How many views each image has, read off `input_ids` (empty: `gswa_plugin.set_tiles` or "
        "single-view images).",
    )

    @classmethod
    def rules(cls, data: dict[str, Any], where: str) -> list[str]:
        problems = []
        apply, projector = data.get("apply", "after_projector"), data.get("projector")
        if apply == "before_projector" and projector is None:
            problems.append(f"`{where}projector` (dotted path of the projector module) is required with "
                            "`apply: before_projector`")
        if apply == "after_projector" and projector is not None:
            problems.append(f"`{where}projector` is only read with `apply: before_projector`")
        layout = data.get("features_layout")
        if isinstance(layout, list) and all(isinstance(a, str) for a in layout):
            roles = [a for i, a in enumerate(layout) if i == 0 or a != layout[i - 1]]
            if roles != ["views", "tokens", "dim"] or layout.count("dim") != 1:
                problems.append(
                    f"`{where}features_layout` must be one or more `views`, then one or more `tokens`, then one "
                    f"`dim` (a reshape, not a transpose, to [views, tokens, dim]); got {layout}"
                )
        tiles = data.get("tiles_from")
        if isinstance(tiles, dict) and tiles.get("group") == "global_marker" and data.get("global_view") != "last":
            problems.append(f"`{where}tiles_from.group` `global_marker` needs `global_view: last` "
                            "(the marked global view closes the image)")
        return problems


# --- the `budget:` block -------------------------------------------------------------------------
class BudgetSpec(Settings):
    """The ``budget:`` block: keep fewer visual tokens, where the tile weights are low.

    See the docs page 'Token budget' and [`select_tokens`][gswa_plugin.budget.select_tokens].
    """

    keep: float | int = Field(
        description="Visual tokens kept per image: a fraction in (0, 1] (a float, `0.5`) or a token count (an "
        "integer >= 2). `1.0` keeps everything and installs nothing (bit-identical to no budget).",
    )
    method: Literal["gswa", "uniform", "random", "globalcom"] = Field(
        "gswa",
        description="How the budget is split among tiles: `gswa` (in proportion to the GSWA weights), `uniform` "
        "(the same fraction of every tile), `random` (uniform split, random tokens), `globalcom` (softmax of the "
        "thumbnail-to-tile cosine similarity, training-free).",
    )
    in_tile: Literal["norm", "summary", "thumbnail"] = Field(
        "norm",
        description="Which tokens of a tile are kept: the highest feature `norm`, the most similar to the tile's "
        "mean token (`summary`) or to the thumbnail's mean token (`thumbnail`).",
    )
    thumbnail_share: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Fraction of each image's budget given to its thumbnail. Empty: the thumbnail counts as one "
        "tile of average share.",
    )
    sharpness: float = Field(1.0, ge=0.0, description="`gswa`: tile shares are the weights to this power.")
    seed: int = Field(0, ge=0, description="`random`: seed of the token draw.")

    @classmethod
    def rules(cls, data: dict[str, Any], where: str) -> list[str]:
        keep = data.get("keep")
        if isinstance(keep, bool):
            return [f"`{where}keep` must be a number, got {keep!r}"]
        if isinstance(keep, float) and not 0.0 < keep <= 1.0:
            return [f"`{where}keep` as a fraction must be in (0, 1], got {keep}; for a token count write an integer"]
        if isinstance(keep, int) and keep < 2:
            return [f"`{where}keep: {keep}` is ambiguous or empty: write `1.0` to keep every token, or a token "
                    "count >= 2"]
        return []

    @property
    def active(self) -> bool:
        """Whether the budget drops anything (``keep: 1.0`` does not)."""
        return not (isinstance(self.keep, float) and self.keep >= 1.0)


# --- the `gswa:` block ----------------------------------------------------------------------------
class GSWAConfig(Settings):
    """Settings of the Global Semantic-guided Weight Allocator.

    Every field maps 1:1 to a key of the ``gswa:`` block in YAML. See the configuration
    reference in the docs (generated from this class). Building or changing a config validates
    it; every problem is reported at once in a [`ConfigError`][gswa_plugin.errors.ConfigError].
    """

    adapter: str | None = Field(
        None, description="Name of the adapter to use (see `gswa adapters`). Empty: chosen from the model."
    )
    declare: HostDeclaration | None = Field(
        None,
        description="With `adapter: declarative`: the description of a host without a built-in adapter (seam, "
        "features, global view, summary, where to apply, tiles per image). See the docs page 'Adapters'.",
    )
    variant: str = Field(
        "self_attn",
        description="Weighting variant: `self_attn` (the paper's, tiles and thumbnail interact through "
        "transformer blocks), `cross_attn` (the thumbnail attends to the tiles, no tile-tile "
        "blocks), `cosine` (training-free: softmax of cosine similarity to the thumbnail), `text_guided` / "
        "`text_cross_attn` (question-aware: the pooled prompt embedding joins the scoring query; see the docs "
        "page 'Question-aware weights'), or a variant registered by a plugin.",
    )
    mode: Mode = Field(
        "embed",
        description="Where the weights act. `embed`: multiply each tile's image embeddings after the "
        "projector (the paper's; a pre-norm language model largely normalises it away). `value`: "
        "multiply the value vectors of the tile's tokens in the language model's self-attention "
        "(any attention kernel). `attn_bias`: add log(w) to the attention logits of the tile's "
        "keys (`eager`/`sdpa` attention). See the docs page 'Application modes'.",
    )
    mode_layers: int | None = Field(
        None,
        ge=1,
        description="`value`/`attn_bias` modes: act in the first this-many decoder layers of the language model "
        "(empty: all layers).",
    )
    hidden_size: int = Field(
        576,
        ge=1,
        description="Width GSWA maps the summaries to before its blocks (576: chosen on the needle benchmark; "
        "the docs page 'Cost benchmark', parameter share).",
    )
    num_layers: int = Field(
        1, ge=0, description="Number of pre-norm transformer blocks before the scoring layer (`self_attn`, `cross_attn`)."
    )
    num_heads: int = Field(
        8, ge=1, description="Attention heads in the blocks and the scoring layer; must divide `hidden_size`."
    )
    mlp_ratio: float = Field(2.0, gt=0, description="MLP width of each block as a multiple of `hidden_size`.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the GSWA blocks while training.")
    temperature: float = Field(
        1.0, gt=0, description="Divides the attention scores before the softmax; below 1 sharpens the weights."
    )
    cosine_temperature: float = Field(
        0.1, gt=0, description="Temperature of the `cosine` variant: `a = softmax(cos(g, s_i) / cosine_temperature)`."
    )
    min_weight: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Floor on every tile weight, applied by mixing with uniform weights "
        "(`w = w + min_weight * (1 - w)`), which keeps the mean at 1.",
    )
    global_weight: float = Field(
        1.0, gt=0, description="Weight of the global thumbnail's tokens (1 leaves them unchanged)."
    )
    summary: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description="Per-tile summary fed to GSWA: `cls` (the encoder's CLS token), `mean` (mean of the "
        "tile's tokens) or `auto` (CLS where the encoder has one, else the mean).",
    )
    score_input: Literal["summary", "squared_deviation"] = Field(
        "summary",
        description="What the attention scorers (`self_attn`, `cross_attn`, `text_guided`, `text_cross_attn`) "
        "read per view: `summary` (the LayerNorm'd "
        "summary, the paper's) or `squared_deviation` (per channel, the squared difference between a view's "
        "LayerNorm'd summary and the mean over its image's tiles: how unlike the other tiles it is, with "
        "no sign, so tiles that differ from the rest in opposite directions all score high). See the "
        "docs page 'Needle-tile benchmark'.",
    )
    distinct_weight: float = Field(
        0.0,
        ge=0.0,
        description="Weight of the distinctiveness term while training (beyond the paper): GSWA's tile distribution "
        "is pulled towards how unlike the other tiles of its image each tile is, an unsupervised reason to keep "
        "every distinct tile high. Its gradient reaches GSWA's parameters only. Add `gswa_plugin.aux_loss(model)` "
        "to your loss (the transformers `GSWATrainer` does it). 0: off. See the docs page 'Training'.",
    )
    distinct_temperature: float = Field(
        1.0, gt=0, description="Temperature of the distinctiveness term's target (below 1: sharper)."
    )
    identity_init: bool = Field(
        True,
        description="Initialise the scoring layer so that attention is uniform: an untrained GSWA changes no output bit.",
    )
    budget: BudgetSpec | None = Field(
        None,
        description="Token budget: keep only part of the visual tokens, chosen by the tile weights "
        "(`{keep: 0.5, method: gswa}`). See the docs page 'Token budget'.",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of GSWA's own random generator for its initial parameters (the global random stream is "
        "left untouched).",
    )

    @classmethod
    def rules(cls, data: dict[str, Any], where: str) -> list[str]:
        problems = []
        fields = cls.model_fields  # the defaults, so this rule follows them
        hidden = data.get("hidden_size", fields["hidden_size"].default)
        heads = data.get("num_heads", fields["num_heads"].default)
        if is_int(hidden) and is_int(heads) and hidden > 0 and heads > 0 and hidden % heads:
            problems.append(f"`{where}num_heads` ({heads}) must divide `{where}hidden_size` ({hidden})")
        adapter, declare = data.get("adapter"), data.get("declare")
        if declare is not None and adapter != DECLARATIVE:
            problems.append(f"`{where}declare` is read only by `adapter: {DECLARATIVE}`; add `adapter: {DECLARATIVE}` "
                            "or remove `declare`")
        if adapter == DECLARATIVE and declare is None:
            problems.append(f"`{where}adapter: {DECLARATIVE}` needs a `declare:` mapping describing the host "
                            "(see the docs page 'Adapters')")
        return problems

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
        return cls.parse(data, source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> GSWAConfig:
        """Read the top-level ``gswa:`` block of a YAML file (other top-level keys are ignored)."""
        path = Path(path)
        data = read_yaml(path)
        if not isinstance(data, dict) or BLOCK_KEY not in data:
            problems = [f"no top-level `{BLOCK_KEY}:` block; put the GSWA settings under `{BLOCK_KEY}:`"]
            if isinstance(data, dict):
                near = [k for k in data if isinstance(k, str) and closest(k, [BLOCK_KEY])]
                problems[0] += f" (found `{near[0]}:`; did you mean `{BLOCK_KEY}:`?)" if near else ""
            raise ConfigError(problems, str(path))
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (the content of a ``gswa:`` block); ``declare`` keeps only
        the keys that were given."""
        out = self.model_dump(by_alias=True, exclude={"declare"})
        declare = None if self.declare is None else self.declare.model_dump(by_alias=True, exclude_unset=True)
        return {"adapter": out.pop("adapter"), "declare": declare, **out}

    def to_yaml(self) -> str:
        """The settings as YAML text with a top-level ``gswa:`` block."""
        return yaml.safe_dump({BLOCK_KEY: self.to_dict()}, sort_keys=False)

    def replace(self, **changes: Any) -> GSWAConfig:
        """A copy with some fields changed (validated like any config)."""
        return GSWAConfig.from_dict({**self.to_dict(), **changes})


def read_yaml(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Parse a YAML file; a missing file or bad YAML is a [`ConfigError`][gswa_plugin.errors.ConfigError] naming the
    path."""
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


def field_docs() -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of every field of [`GSWAConfig`][gswa_plugin.config.GSWAConfig], for docs and the
    CLI."""
    return GSWAConfig.field_docs()
