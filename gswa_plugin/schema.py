"""One schema mechanism for every mapping of settings gswa-plugin reads.

The GSWA block ([`GSWAConfig`][gswa_plugin.config.GSWAConfig]), the declaration of a host without a
built-in adapter ([`HostDeclaration`][gswa_plugin.config.HostDeclaration]) and a training recipe
([`TrainConfig`][gswa_plugin.integrations.transformers.config.TrainConfig]) are all
[`Settings`][gswa_plugin.schema.Settings]: pydantic v2 models that

* check types strictly (``"2"`` is not an int, ``true`` is not a number), ranges and enumerated
  values, and refuse NaN and infinity;
* report **every** problem at once, as one [`ConfigError`][gswa_plugin.errors.ConfigError] whose lines
  name the dotted key (``declare.tiles_from.group``), say what is wanted and what was given, and
  suggest the closest valid key or value ("did you mean ...?");
* check rules between fields (``num_heads`` divides ``hidden_size``) on the raw mapping, so
  those problems are listed together with the per-field ones;
* validate assignments too: ``config.num_heads = 0`` raises and leaves the object unchanged;
* export a JSON Schema ([`json_schema`][gswa_plugin.schema.json_schema], ``gswa schema``) that editors use to complete
  and
  check YAML files.

pydantic is used rather than hand-written checks because it already does strict typing, nested
models, assignment validation and JSON Schema; this module only turns its errors into the
project's messages.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from gswa_plugin.errors import ConfigError


class Describe:
    """Annotation metadata giving a type its name in error messages (``Annotated[str, ..., Describe("...")]``)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Describe({self.text!r})"


#: An attribute name (``pooler_output``).
Name = Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"), Describe("an attribute name")]
#: A dotted attribute path (``model.get_image_features``).
DottedPath = Annotated[
    str,
    pydantic.StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"),
    Describe("a dotted path (like model.vision_tower)"),
]
#: A positive integer.
PositiveInt = Annotated[int, pydantic.Field(ge=1), Describe("a positive integer")]


class Settings(BaseModel):
    """Base of every settings model: strict, closed to unknown keys, finite, validated on assignment.

    Subclasses add cross-field rules by overriding ``rules``, which sees the raw mapping (so
    it runs even when some fields are invalid) and must guard the types it reads.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_assignment=True,
        allow_inf_nan=False,
        populate_by_name=True,
    )

    def __init__(self, /, **data: Any) -> None:
        problems: list[str] = []
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = problems_of(exc, type(self))
        # settings objects given as values were checked when built; their fields still feed the rules
        raw = {k: v.model_dump(by_alias=True) if isinstance(v, BaseModel) else v for k, v in data.items()}
        problems += type(self).rule_problems(raw)
        if problems:
            raise ConfigError(problems)

    # pydantic calls a model's own __init__ while validating it as a nested field unless marked as
    # its base __init__: nested settings are validated (and their rules checked) by `parse`.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name not in type(self).model_fields:
            super().__setattr__(name, value)
            return
        before = getattr(self, name)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ConfigError(problems_of(exc, type(self))) from None
        problems = type(self).rule_problems(self.model_dump(by_alias=True))
        if problems:
            super().__setattr__(name, before)
            raise ConfigError(problems)

    @classmethod
    def rules(cls, data: dict[str, Any], where: str) -> list[str]:
        """Problems between fields of the raw mapping ``data`` (keys as written in YAML);
        ``where`` prefixes every key named in a message. None by default."""
        return []

    @classmethod
    def rule_problems(cls, data: Any, where: str = "") -> list[str]:
        """``rules`` of this model and of every nested settings mapping in ``data``."""
        if not isinstance(data, dict):
            return []
        problems = list(cls.rules(data, where))
        for name, info in cls.model_fields.items():
            key = info.alias or name
            sub = _settings_class(info.annotation)
            if sub is not None and isinstance(data.get(key), dict):
                problems += sub.rule_problems(data[key], f"{where}{key}.")
        return problems

    @classmethod
    def parse(cls, data: Any, source: str | None = None, where: str = "") -> Any:
        """Validate a mapping (as read from YAML) into this model.

        Args:
            data: the mapping.
            source: file the mapping came from, named in the error.
            where: prefix of every key in the messages (e.g. ``gswa.`` for a nested block).

        Raises:
            ConfigError: listing every problem at once.
        """
        if not isinstance(data, dict):
            label = f"`{where.rstrip('.')}`" if where else "the settings"
            raise ConfigError([f"{label} must be a mapping of keys, got {_got(data)}"], source)
        problems: list[str] = []
        result = None
        try:
            result = cls.model_validate(data)
        except ValidationError as exc:
            problems = problems_of(exc, cls, where)
        problems += cls.rule_problems(data, where)
        if problems:
            raise ConfigError(problems, source)
        return result

    @classmethod
    def field_docs(cls) -> list[tuple[str, str, Any, str]]:
        """(key, type, default, help) of every field, for the docs and the CLI."""
        out = []
        for name, info in cls.model_fields.items():
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(by_alias=True, exclude_unset=True)
            out.append((info.alias or name, describe(info.annotation, info.metadata), default, info.description or ""))
        return out


# --- turning pydantic's errors into the project's messages -----------------------------------------
def _unwrap_annotated(tp: Any, meta: list[Any]) -> tuple[Any, list[Any]]:
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp, meta = args[0], [*meta, *args[1:]]
    return tp, meta


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _settings_class(tp: Any) -> type[Settings] | None:
    """The settings model inside ``tp`` (``Model`` or ``Model | None``), if any."""
    found = _model_class(tp)
    return found if found is not None and issubclass(found, Settings) else None


def describe(tp: Any, meta: list[Any] | None = None) -> str:
    """A readable name of a field type: ``int``, ``one of 'a', 'b'``, ``a list of str``, ..."""
    tp, meta = _unwrap_annotated(tp, list(meta or []))
    for m in meta:
        if isinstance(m, Describe):
            return m.text
    if _is_union(tp):
        args = typing.get_args(tp)
        parts = [describe(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return (", or " if any(" or " in p for p in parts) else " or ").join(parts)
    origin = typing.get_origin(tp)
    if origin is Literal:
        values = typing.get_args(tp)
        return repr(values[0]) if len(values) == 1 else "one of " + ", ".join(repr(v) for v in values)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if typing.get_origin(item) is Literal and len(typing.get_args(item)) > 1:
            *head, last = (repr(v) for v in typing.get_args(item))
            return f"a list of {', '.join(head)} or {last}"
        return f"a list of {describe(item)}"
    if origin is dict or tp is dict:
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping"
    if tp is Any:
        return "anything"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _got(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def closest(word: Any, options: list[str]) -> str | None:
    """The option closest to ``word`` ("did you mean"), or ``None`` when none is close."""
    found = difflib.get_close_matches(str(word), options, n=1, cutoff=0.5)
    return found[0] if found else None


def _walk(
    model: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[list[str], Any, list[Any], str, type[BaseModel] | None]:
    """Follow an error location through the model: (key path, type, metadata, kind, parent model).

    ``kind`` is ``field`` (the location is a field), ``unknown`` (the last element is a key the
    parent model lacks) or ``union`` (the error is about one member of a union-typed field).
    """
    path: list[str] = []
    tp: Any = model
    meta: list[Any] = []
    parent: type[BaseModel] | None = model
    for element in loc:
        tp, meta = _unwrap_annotated(tp, meta)
        sub = _model_class(tp)
        if sub is not None:
            info = _field_info(sub, str(element))
            if info is None:
                return [*path, str(element)], None, [], "unknown", sub
            path.append(str(element))
            tp, meta, parent = info.annotation, list(info.metadata), sub
            continue
        if _is_union(tp):
            return path, tp, meta, "union", parent
        origin = typing.get_origin(tp)
        if origin is list and isinstance(element, int):
            if path:
                path[-1] = f"{path[-1]}[{element}]"
            tp, meta = (typing.get_args(tp) or (Any,))[0], []
            continue
        if origin is dict:
            path.append(str(element))
            tp, meta = (typing.get_args(tp) or (Any, Any))[-1], []
            continue
        return path, tp, meta, "union", parent  # a constrained or tagged member: report the field as a whole
    return path, tp, meta, "field", parent


def _model_class(tp: Any) -> type[BaseModel] | None:
    """The pydantic model ``tp`` is (``Model`` or ``Model | None``), if any."""
    tp, _ = _unwrap_annotated(tp, [])
    if _is_union(tp):
        found = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = found[0] if len(found) == 1 else None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


#: pydantic's error type of a numeric bound -> (sign, key of the bound in the error's context).
_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def problems_of(exc: ValidationError, model: type[BaseModel], where: str = "") -> list[str]:
    """One readable line per problem in a pydantic ``ValidationError`` of ``model``.

    Several errors about the members of one union-typed field become one line.
    """
    problems: list[str] = []
    seen_unions: set[tuple[str, ...]] = set()
    for err in exc.errors(include_url=False):
        path, tp, meta, kind, parent = _walk(model, tuple(err["loc"]))
        label = f"`{where}{'.'.join(path)}`" if path else f"`{where.rstrip('.')}`" if where else "the settings"
        value, etype, ctx = err.get("input"), err["type"], err.get("ctx") or {}
        if kind == "unknown":
            options = [info.alias or name for name, info in parent.model_fields.items()] if parent else []
            close = closest(path[-1], options)
            hint = f"; did you mean `{close}`?" if close else f"; valid keys: {', '.join(options)}"
            problems.append(f"unknown key {label}{hint}")
            continue
        if kind == "union" or etype in ("string_pattern_mismatch",):
            if tuple(path) in seen_unions:
                continue
            seen_unions.add(tuple(path))
            problems.append(f"{label} must be {describe(tp, meta)}, got {_got(value)}")
            continue
        if etype == "missing":
            info = _field_info(parent, path[-1]) if parent and path else None
            help_text = f": {info.description}" if info is not None and info.description else ""
            problems.append(f"{label} is required{help_text}")
        elif etype == "literal_error":
            options = [str(v) for v in typing.get_args(_unwrap_annotated(tp, [])[0])]
            close = closest(value, options) if isinstance(value, str) else None
            hint = f"; did you mean `{close}`?" if close else ""
            choices = ", ".join(repr(v) for v in typing.get_args(_unwrap_annotated(tp, [])[0]))
            problems.append(f"{label} must be one of {choices}; got {value!r}{hint}")
        elif etype in _BOUNDS:
            sign, key = _BOUNDS[etype]
            problems.append(f"{label} must be {sign} {_num(ctx[key])}, got {value!r}")
        elif etype == "finite_number":
            problems.append(f"{label} must be a finite number, got {value!r}")
        elif etype == "value_error":
            problems.append(f"{label}: {str(ctx.get('error', err['msg']))}")
        elif etype.endswith("_type") or etype in ("model_attributes_type", "dict_type", "model_type"):
            problems.append(f"{label} must be {describe(tp, meta)}, got {_got(value)}")
        else:
            problems.append(f"{label}: {err['msg']}; got {_got(value)}")
    return problems


def _field_info(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info
    return None


# --- helpers for rules -------------------------------------------------------------------------------
def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def unknown_key(key: Any, valid: list[str], where: str = "") -> str:
    """The message for a key that is not one of ``valid``, with the closest valid key."""
    close = closest(key, valid)
    hint = f"; did you mean `{close}`?" if close else f"; valid keys: {', '.join(valid)}"
    return f"unknown key `{where}{key}`{hint}"


def json_schema(model: type[BaseModel], block: str | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``model``; with ``block``, of a file holding it under that key.

    Editors with a YAML language server use it for completion and checking, e.g. with a first
    line ``# yaml-language-server: $schema=gswa.schema.json``.
    """
    schema = model.model_json_schema(by_alias=True, mode="validation")
    if block is None:
        return schema
    defs = schema.pop("$defs", {})
    wrapped: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{schema.get('title', model.__name__)} file",
        "description": f"A YAML file with the settings under a top-level `{block}:` key (other keys are left to the host).",
        "type": "object",
        "properties": {block: schema},
        "required": [block],
    }
    if defs:
        wrapped["$defs"] = defs
    return wrapped
