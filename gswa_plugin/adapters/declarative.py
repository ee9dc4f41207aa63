"""The declarative adapter: retrofit a tiling model that has no built-in adapter from YAML alone.

The ``declare:`` mapping inside the ``gswa:`` block says where the host's seam is and how its
views are laid out; this adapter does the rest. It never matches a model by itself: it is used
only when the config names it (``adapter: declarative``). Example (transformers' GOT-OCR2, which
tiles a page into 2-12 crops plus a thumbnail LAST)::

    gswa:
      adapter: declarative
      declare:
        match: {model_type: got_ocr2}
        seam: model.get_image_features
        features: pooler_output
        global_view: last
        summary: {from: module, module: model.vision_tower, output: last_hidden_state,
                  token: mean, channels: first, dim: vision_config.output_channels}
        apply: after_projector
        tiles_from: {group: run, token: image_token_id}

The keys of ``declare`` and their rules are defined once, by the schema
[`HostDeclaration`][gswa_plugin.config.HostDeclaration] (its field descriptions are the reference; the
docs page 'Adapters' and ``gswa schema`` are generated from it). Every problem is reported at
once, naming the ``declare.*`` key.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from gswa_plugin.adapters._base import Adapter, install_input_ids_capture, patch_method, resolve_path
from gswa_plugin.adapters._layout import (
    views_closed_by_marker,
    views_joined_by_text,
    views_opened_by_marker,
    views_per_run,
)
from gswa_plugin.config import DECLARATIVE, HostDeclaration
from gswa_plugin.errors import AdapterNotFoundError, ConfigError, LayoutError, MissingModuleError, SeamNotRunError
from gswa_plugin.hookspecs import hookimpl

NAME = DECLARATIVE


@dataclass(frozen=True)
class Declaration:
    """A validated ``declare:`` block flattened for the adapter (the keys are documented by
    [`HostDeclaration`][gswa_plugin.config.HostDeclaration])."""

    model_types: tuple[str, ...]
    class_names: tuple[str, ...]
    seam: str
    features: str | int
    global_view: str
    summary_from: str
    summary_module: str | None
    summary_output: str | int
    summary_token: str | int
    summary_channels: str
    summary_dim: int | str | None
    summary_layer: int | None
    apply: str
    projector: str | None
    tiles_group: str | None = None  # no `tiles_from`: set_tiles() or single-view images
    tiles_token: int | str | None = None
    tokens_per_view: int | None = None
    start_token: int | str | None = None
    marker_token: int | str | None = "auto"
    views_per_image: int | None = None
    joiner_tokens: tuple[int | str, ...] = ()
    expect_tiles: bool = True
    features_layout: tuple[str, ...] | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_declaration(data: Any) -> list[str]:
    """Every problem of a ``declare:`` mapping, one readable line each (empty when valid)."""
    try:
        parse_declaration(data)
    except ConfigError as exc:
        return exc.problems
    return []


def parse_declaration(data: HostDeclaration | dict[str, Any]) -> Declaration:
    """Validate a ``declare:`` mapping (schema: [`HostDeclaration`][gswa_plugin.config.HostDeclaration]) and
    flatten it into the [`Declaration`][gswa_plugin.adapters.declarative.Declaration] the adapter runs from.

    Raises:
        ConfigError: listing every problem at once, each naming the ``declare.*`` key it concerns.
    """
    spec = data if isinstance(data, HostDeclaration) else HostDeclaration.parse(data, where="declare.")
    s, tiles = spec.summary, spec.tiles_from

    def names(v: str | list[str] | None) -> tuple[str, ...]:
        return () if v is None else (v,) if isinstance(v, str) else tuple(v)

    read_tiles = {}
    if tiles is not None:
        read_tiles = dict(
            tiles_group=tiles.group,
            tiles_token=tiles.token,
            tokens_per_view=None if tiles.tokens_per_view == "auto" else tiles.tokens_per_view,
            start_token=tiles.start_token,
            marker_token=tiles.marker_token,
            views_per_image=tiles.views_per_image,
            joiner_tokens=tuple(tiles.joiner_tokens or ()),
            expect_tiles=tiles.expect_tiles,
        )
    return Declaration(
        model_types=names(spec.match.model_type),
        class_names=names(spec.match.class_),
        seam=spec.seam,
        features=spec.features,
        global_view=spec.global_view,
        summary_from=s.from_,
        summary_module=s.module,
        summary_output=s.output,
        summary_token=s.token,
        summary_channels=s.channels,
        summary_dim=s.dim,
        summary_layer=s.layer,
        apply=spec.apply,
        projector=spec.projector,
        features_layout=None if spec.features_layout is None else tuple(spec.features_layout),
        **read_tiles,
    )


def _pick(output: Any, where: str | int) -> Any:
    """``output.<where>``, ``output[where]`` or ``output`` itself for ``"return"``."""
    if where == "return":
        return output
    if _is_int(where):
        return output[where]
    if isinstance(output, dict) and where in output:
        return output[where]
    return getattr(output, where)


def _put(output: Any, where: str | int, value: Any) -> Any:
    """``output`` with ``where`` replaced by ``value`` (a new tuple for index access)."""
    if where == "return":
        return value
    if _is_int(where) and isinstance(output, tuple) and not hasattr(output, "keys"):
        items = list(output)
        items[where] = value
        return tuple(items)
    if _is_int(where):
        output[where] = value
        return output
    if isinstance(output, dict) and not hasattr(output, where):
        output[where] = value
        return output
    setattr(output, where, value)
    if hasattr(output, "keys") and where in output.keys():
        output[where] = value
    return output


def _output_width(module: nn.Module | None) -> int | None:
    """The width the last registered norm, linear or convolution layer of ``module`` gives
    (its summarised output, for the encoders in transformers); ``None`` if it has none."""
    width = None
    for sub in module.modules() if module is not None else ():
        if isinstance(sub, nn.Linear):
            width = sub.out_features
        elif isinstance(sub, nn.modules.conv._ConvNd):
            width = sub.out_channels
        elif isinstance(sub, (nn.LayerNorm, nn.GroupNorm)) or type(sub).__name__.endswith(("LayerNorm", "RMSNorm", "LayerNorm2d")):
            weight = getattr(sub, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 1:
                width = weight.shape[0]
    return width


def _config_value(model: nn.Module, ref: int | str | None) -> Any:
    if ref is None or _is_int(ref):
        return ref
    return resolve_path(model.config, ref)


class DeclarativeAdapter(Adapter):
    """Adapter built from the ``declare:`` mapping of the config (see the module docstring)."""

    name = NAME
    description = "any tiling model, described in YAML (`declare:` in the gswa block); used only when named"
    # Set per model from `declare.global_view` on the copy that install() gives the handle.
    global_position = "declared"
    has_cls = False
    auto_match = False

    grouping_hint = (
        "or declare `declare.tiles_from` (how the views group into images in `input_ids`) so that the adapter "
        "reads the grouping of every call itself"
    )
    _decl: Declaration | None = None

    def seam_not_run(self, handle: Any) -> str:
        decl = self._decl
        if decl is None:  # pragma: no cover - only the bound copy is installed
            return super().seam_not_run(handle)
        if not handle.state.get("declarative_seam_calls"):
            return (
                f"the model was called with images but declare.seam `{decl.seam}` never ran, so GSWA weighted "
                "nothing: the host computes its image features elsewhere. Point declare.seam at the method the "
                "model's forward calls for them (print the model, or read its forward: usually "
                "`model.get_image_features`)"
            )
        if decl.apply == "before_projector":
            return (
                f"declare.seam `{decl.seam}` ran but declare.projector `{decl.projector}` did not run inside it, so "
                "GSWA weighted nothing: with `apply: before_projector` the projector must be called within the seam "
                "call. Name a seam that also runs the projector, or use `apply: after_projector`"
            )
        return f"declare.seam `{decl.seam}` ran but handed GSWA no views; check declare.features `{decl.features}`"

    def matches(self, model: nn.Module) -> bool:
        # Any model can be described; the declaration's own `match` is checked at enable time.
        return True

    def declaration(self, config: Any) -> Declaration:
        if getattr(config, "declare", None) is None:
            raise ConfigError(
                ["`adapter: declarative` needs a `declare:` mapping describing the seam (see the docs page 'Adapters')"]
            )
        return parse_declaration(config.declare)

    def _check_model(self, model: nn.Module, decl: Declaration) -> None:
        mtype = getattr(getattr(model, "config", None), "model_type", None)
        cls = type(model).__name__
        ok_type = not decl.model_types or mtype in decl.model_types
        ok_cls = not decl.class_names or cls in decl.class_names
        if not (ok_type and ok_cls):
            want = [f"model_type in {list(decl.model_types)}"] if decl.model_types else []
            want += [f"class in {list(decl.class_names)}"] if decl.class_names else []
            raise AdapterNotFoundError(
                f"the declarative adapter's `declare.match` asks for {' and '.join(want)} but the model is "
                f"{cls} (model_type={mtype!r}); fix `declare.match` or enable it on the model it describes"
            )
        paths = {"declare.seam": decl.seam}
        if decl.summary_module:
            paths["declare.summary.module"] = decl.summary_module
        if decl.projector:
            paths["declare.projector"] = decl.projector
        missing = [f"{key} `{path}`" for key, path in paths.items() if resolve_path(model, path) is None]
        target = resolve_path(model, decl.seam)
        if isinstance(target, nn.Module):
            raise MissingModuleError(
                f"declare.seam `{decl.seam}` names a module ({type(target).__name__}), not a method: the seam is the "
                f"method whose output holds every view's features. Name a method, e.g. `{decl.seam}.forward` (the "
                "module's own output) or the method of its owner that calls it (`model.get_image_features`)"
            )
        if target is not None and not callable(target):
            missing.append(f"declare.seam `{decl.seam}` (not a method)")
        refs = [("declare.tiles_from.token", decl.tiles_token), ("declare.tiles_from.start_token", decl.start_token)]
        refs += [(f"declare.tiles_from.joiner_tokens[{i}]", ref) for i, ref in enumerate(decl.joiner_tokens)]
        for key, ref in refs:
            if isinstance(ref, str) and not _is_int(_config_value(model, ref)):
                missing.append(f"{key} `{ref}` (no such integer in model.config)")
        if isinstance(decl.marker_token, str) and decl.marker_token != "auto" and decl.tiles_group == "global_marker":
            if not _is_int(_config_value(model, decl.marker_token)):
                missing.append(
                    f"declare.tiles_from.marker_token `{decl.marker_token}` (no such integer in model.config)"
                )
        if missing:
            raise MissingModuleError(
                f"the declaration does not fit this {cls}: it has no {', '.join(missing)}. "
                "Paths start at the model (e.g. `model.get_image_features`); print(model) shows its modules"
            )

    def summary_dim(self, model: nn.Module, config: Any) -> int:
        decl = self.declaration(config)
        self._check_model(model, decl)
        if config.summary == "cls" and decl.summary_token != "cls":
            raise ConfigError(
                ["`summary: cls` but `declare.summary.token` is not `cls`; the declaration decides the summary"]
            )
        ref = decl.summary_dim
        if ref is None:
            ref = "vision_config.hidden_size" if decl.summary_from == "module" else "text_config.hidden_size"
        dim = _config_value(model, ref)
        if not _is_int(dim):
            raise ConfigError(
                [
                    f"declare.summary.dim: `{ref}` is not an integer in model.config; give the summary width as an integer"
                ]
            )
        if decl.summary_from == "module" and decl.summary_output in ("last_hidden_state", "return"):
            width = _output_width(resolve_path(model, decl.summary_module))
            if width is not None and width != dim:
                raise ConfigError(
                    [
                        f"declare.summary.dim resolves to {dim} (`{ref}`) but the last layer of "
                        f"declare.summary.module `{decl.summary_module}` gives width {width} (a strided or "
                        f"narrowing encoder?); set declare.summary.dim to {width} or to the config key that holds it"
                    ]
                )
        return dim

    def reference_parameter(self, model: nn.Module) -> torch.Tensor:
        return next(p for p in model.parameters() if p.is_floating_point())

    def install(self, model: nn.Module, handle: Any) -> None:
        decl = self.declaration(handle.config)
        self._check_model(model, decl)
        owner_path, _, method = decl.seam.rpartition(".")
        owner = resolve_path(model, owner_path) if owner_path else model

        def seen() -> dict[str, Any]:  # per thread: concurrent calls never mix
            return handle.state.setdefault("declarative_seen", {})

        per_view = decl.tokens_per_view
        tiles_token = _config_value(model, decl.tiles_token)
        start_token = _config_value(model, decl.start_token)
        marker = None if decl.marker_token in (None, "auto") else _config_value(model, decl.marker_token)
        joiners = [_config_value(model, ref) for ref in decl.joiner_tokens]
        dim = handle.module.summary_dim
        # The registered adapter is shared by every model; the handle gets a copy that carries
        # this declaration's global position (read by handle.layout_for).
        bound = copy.copy(self)
        bound.global_position = decl.global_view
        bound._decl = decl
        handle.adapter = bound

        def summaries_of(features: torch.Tensor) -> torch.Tensor:
            if decl.summary_from == "features":
                return features.mean(dim=1)
            out = seen().pop("module_output", None)
            if out is None:
                raise LayoutError(
                    f"declare.summary.module `{decl.summary_module}` did not run during the `{decl.seam}` call"
                )
            if decl.summary_output == "hidden_states" and decl.summary_layer is not None:
                hidden = out.hidden_states[decl.summary_layer]
            else:
                hidden = _pick(out, decl.summary_output)
            if decl.summary_channels == "first":
                return hidden.flatten(2).mean(dim=-1)
            if decl.summary_token == "mean":
                return hidden.mean(dim=1)
            return hidden[:, 0 if decl.summary_token == "cls" else decl.summary_token]

        @torch.compiler.disable  # host-side numpy on the ids' host copy
        def counts(n_views: int, tokens: int) -> list[int] | None:
            ids = handle.state.pop("input_ids", None)
            if decl.tiles_group == "fixed":
                if n_views % decl.views_per_image:
                    raise LayoutError(
                        f"declare.tiles_from.views_per_image is {decl.views_per_image} but {n_views} views reached the seam"
                    )
                return [decl.views_per_image] * (n_views // decl.views_per_image)
            if decl.tiles_group is None or ids is None:
                return None
            n = per_view or tokens
            ids = handle.host_ids(ids)
            if decl.tiles_group == "run":
                return views_per_run(ids, tiles_token, n)
            if decl.tiles_group == "start_token":
                rows = ids if ids.ndim == 2 else ids[None]
                is_image, is_start = rows == tiles_token, rows == start_token
                has_image = is_image.any(1)
                first_image = np.where(has_image, is_image.argmax(1), rows.shape[1])
                opened = (is_start & (np.arange(rows.shape[1])[None] < first_image[:, None])).any(1) | ~has_image
                if not bool(opened.all()):
                    raise LayoutError(
                        f"declare.tiles_from.start_token ({start_token}) does not open the images: placeholders "
                        f"({tiles_token}) come before any start token in row(s) "
                        f"{np.nonzero(~opened)[0].tolist()}; name the token the processor writes before each "
                        "image's placeholders"
                    )
                return views_opened_by_marker(ids, tiles_token, n, start_token)
            if decl.tiles_group == "joined_views":
                return views_joined_by_text(ids, tiles_token, n, joiners)
            return views_closed_by_marker(ids, tiles_token, n, marker)

        def plausible(layout: Any, from_ids: bool) -> None:
            # Checked on the first batch with images: a grouping that makes every view its own
            # image (a start token per view read as one per image, a run per view) is a silent
            # no-op, since single-view images are left unchanged.
            if handle.state.get("declarative_plausible") or not from_ids or not decl.expect_tiles:
                return
            views = layout.views_per_image
            if decl.global_view != "none" and len(views) > 1 and all(v == 1 for v in views):
                raise SeamNotRunError(
                    f"declare.tiles_from (group `{decl.tiles_group}`) splits the {len(views)} views of this batch into "
                    f"{len(views)} images of one view each, so GSWA leaves every one unchanged. If the images are "
                    "tiled, the grouping is wrong: with one start token per view use `group: joined_views` (Gemma 3 "
                    "pan-and-scan), with one run per view `group: global_marker`; check `declare.tiles_from.token`. "
                    "If this data is really untiled, set `declare.tiles_from.expect_tiles: false`"
                )
            handle.state["declarative_plausible"] = True

        def as_views(features: torch.Tensor) -> torch.Tensor:
            # `declare.features_layout`: views axes, tokens axes, dim -> [views, tokens, dim] (a view
            # of the same memory; the caller reshapes the result back to the host's shape).
            roles = decl.features_layout
            if roles is None:
                if features.dim() != 3:
                    raise LayoutError(
                        f"declare.features must give [views, tokens, dim] (or a list of such tensors); got a tensor "
                        f"of shape {tuple(features.shape)} at `{decl.seam}`. For more dimensions, declare the role "
                        "of each axis in declare.features_layout (e.g. `[views, tokens, tokens, dim]`)"
                    )
                return features
            if features.dim() != len(roles):
                raise LayoutError(
                    f"declare.features_layout {list(roles)} names {len(roles)} axes but `{decl.seam}` gave features "
                    f"of shape {tuple(features.shape)} ({features.dim()} axes); give one role per axis"
                )
            n_views, n_tokens = roles.count("views"), roles.count("tokens")
            return features.reshape(
                math.prod(features.shape[:n_views]), math.prod(features.shape[n_views : n_views + n_tokens]), -1
            )

        def check_views(raw: torch.Tensor, features: torch.Tensor, found: Any, pixels: Any) -> None:
            # The views the layout reads must be the views the images hold: counted by set_tiles(),
            # by `input_ids` with a declared `tokens_per_view` (with `auto` the count follows the
            # layout's own tokens per view), else by the leading axes of `pixel_values` (one image
            # [C, H, W] per view).
            told, what = None, ""
            if handle.views_override is not None:
                told, what = handle.views_override, "set_tiles()"
            elif found is not None and (per_view is not None or decl.tiles_group == "fixed"):
                told, what = found, "declare.tiles_from"
            elif isinstance(pixels, torch.Tensor) and pixels.dim() >= 4:
                told, what = [math.prod(pixels.shape[:-3])], f"pixel_values of shape {tuple(pixels.shape)}"
            if told is not None and sum(told) != features.shape[0]:
                raise LayoutError(
                    f"declare.features_layout {list(decl.features_layout)} reads features of shape "
                    f"{tuple(raw.shape)} as {features.shape[0]} views of {features.shape[1]} tokens, but the images "
                    f"hold {sum(told)} views (counted by {what}); fix which axes are `views` and "
                    "which are `tokens` (a host that pads `pixel_values` with empty images: declare "
                    "tiles_from.tokens_per_view, and the views are counted from input_ids instead)"
                )

        def weigh(raw: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
            features = as_views(raw)
            summaries = summaries_of(features)
            if summaries.shape[-1] != dim:
                raise LayoutError(
                    f"declare.summary gives summaries of width {summaries.shape[-1]} but `dim` resolved to {dim}; "
                    "set declare.summary.dim to the width of the summarised output"
                )
            found = counts(features.shape[0], features.shape[1])
            if decl.features_layout is not None:
                check_views(raw, features, found, extra.get("pixel_values"))
            layout = handle.layout_for(features.shape[0], found)
            plausible(layout, found is not None and handle.views_override is None)
            return handle.process(features, summaries, layout, **extra).reshape(raw.shape)

        def weigh_any(value: Any, extra: dict[str, Any]) -> Any:
            if not isinstance(value, (list, tuple)):
                return weigh(value, extra)
            parts = list(value)
            flat = bool(parts) and parts[0].dim() == 2
            if flat:  # one [views_i * tokens, dim] block per sample (Idefics3-style)
                if per_view is None:
                    raise LayoutError(
                        f"`{decl.seam}` gives flat [views * tokens, dim] blocks; set declare.tiles_from.tokens_per_view "
                        "to the tokens of one view so that they can be split into views"
                    )
                parts = [p.reshape(-1, per_view, p.shape[-1]) for p in parts]
            sizes = [p.shape[0] for p in parts]
            pieces = weigh(torch.cat(parts, dim=0), extra).split(sizes)
            if flat:
                pieces = [p.reshape(-1, p.shape[-1]) for p in pieces]
            return tuple(pieces) if isinstance(value, tuple) else list(pieces)

        if decl.summary_module:

            def capture(module: nn.Module, args: tuple, output: Any) -> None:
                if seen().get("active"):
                    seen()["module_output"] = output

            h = resolve_path(model, decl.summary_module).register_forward_hook(capture)
            handle.add_undo(h.remove)

        if decl.apply == "before_projector":

            def scale_input(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
                if not seen().get("active") or not args:
                    return None
                return (weigh(args[0], {}),) + tuple(args[1:]), kwargs

            h = resolve_path(model, decl.projector).register_forward_pre_hook(scale_input, with_kwargs=True)
            handle.add_undo(h.remove)

        def make_wrapper(original: Callable) -> Callable:
            def seam(*args: Any, **kwargs: Any) -> Any:
                handle.state["declarative_seam_calls"] = handle.state.get("declarative_seam_calls", 0) + 1
                seen().clear()
                seen()["active"] = True
                try:
                    out = original(*args, **kwargs)
                finally:
                    seen()["active"] = False
                if decl.apply == "before_projector":
                    return out
                pixel_values = kwargs.get("pixel_values", args[0] if args else None)
                extra = {"pixel_values": pixel_values} if isinstance(pixel_values, torch.Tensor) else {}
                return _put(out, decl.features, weigh_any(_pick(out, decl.features), extra))

            return seam

        handle.add_undo(patch_method(owner, method, make_wrapper))
        install_input_ids_capture(model, owner, handle)


@hookimpl
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(DeclarativeAdapter())
