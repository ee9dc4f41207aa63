"""mkdocs hooks (``hooks:`` in mkdocs.yml): the generated parts of the docs.

* ``<!-- gswa:config-reference -->`` becomes the configuration reference, rendered from the
  :class:`gswa_plugin.config.GSWAConfig` schema (names, types, defaults, limits, help), so the
  reference is never copied by hand.
* ``<!-- gswa:architecture -->`` becomes the picture of the package's layers, drawn from
  ``gswa_plugin._layers.LAYERS`` (the list ``tests/test_architecture.py`` enforces).
* ``<!-- gswa:declare-reference -->`` becomes the table of every ``declare:`` key, from
  :class:`gswa_plugin.config.HostDeclaration`.
* ``<!-- gswa:hooks-reference -->`` becomes one section per hook of
  :mod:`gswa_plugin.hookspecs` with its exact signature and its docstring.
* ``<!-- gswa:adapters-table -->`` becomes the table of built-in adapters (thumbnail position,
  summary, hosts), read from the registry.
* Nav entries whose page does not exist are left out (and logged), so that a page planned in the
  nav but not written yet does not break ``mkdocs build --strict``. The tests check that every
  page under ``docs/`` is in the nav.

The tests import this file to check what it renders.
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("mkdocs.hooks.gswa")

CONFIG_MARKER = "<!-- gswa:config-reference -->"
HOOKS_MARKER = "<!-- gswa:hooks-reference -->"
ADAPTERS_MARKER = "<!-- gswa:adapters-table -->"
DECLARE_MARKER = "<!-- gswa:declare-reference -->"
ARCHITECTURE_MARKER = "<!-- gswa:architecture -->"


# --- configuration reference -------------------------------------------------------------------
def _limits(info: Any) -> str:
    """The numeric limits of a pydantic field (``>= 1``, ``> 0``, ``< 1``), from its metadata."""
    parts = []
    for m in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(m, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return "; ".join(parts)


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def render_config_reference() -> str:
    """Markdown for every field of ``GSWAConfig``: the default block, then one section per field."""
    from gswa_plugin.config import BLOCK_KEY, GSWAConfig, field_docs

    fields = {info.alias or name: info for name, info in GSWAConfig.model_fields.items()}
    out = [
        f"Every key of the `{BLOCK_KEY}:` block, with its default. Unknown keys, wrong types, values "
        "out of range and non-finite numbers are all reported at once (`gswa check FILE`).",
        "",
        "```yaml",
        GSWAConfig().to_yaml().rstrip(),
        "```",
        "",
        "| key | type | default | limits |",
        "|---|---|---|---|",
    ]
    docs = field_docs()
    for name, type_name, default, _ in docs:
        out.append(
            f"| [`{name}`](#{name.replace('_', '-')}) | `{type_name}` | `{_yaml_value(default)}` | "
            f"{_limits(fields[name]) or '—'} |"
        )
    for name, type_name, default, help_text in docs:
        limits = _limits(fields[name])
        out += [
            "",
            f"### `{name}` {{#{name.replace('_', '-')}}}",
            "",
            f"Type `{type_name}`, default `{_yaml_value(default)}`" + (f", {limits}." if limits else "."),
            "",
            help_text,
        ]
    return "\n".join(out) + "\n"


def _settings_rows(model: Any, prefix: str) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) of a settings model, nested models flattened."""
    from gswa_plugin.schema import _settings_class

    rows = []
    for name, type_name, default, help_text in model.field_docs():
        info = next(i for n, i in model.model_fields.items() if (i.alias or n) == name)
        required = info.is_required()
        nested = _settings_class(info.annotation)
        default_text = "required" if required else f"`{_yaml_value(default)}`"
        if nested is not None:
            rows.append((f"{prefix}{name}", "a mapping", default_text if required else "", help_text))
            rows += _settings_rows(nested, f"{prefix}{name}.")
        else:
            rows.append((f"{prefix}{name}", type_name, default_text, help_text))
    return rows


def render_declare_reference() -> str:
    """The table of every key of the ``declare:`` block, from ``HostDeclaration``."""
    from gswa_plugin.config import HostDeclaration

    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, help_text in _settings_rows(HostDeclaration, ""):
        out.append(f"| `{key}` | {type_name.replace('|', 'or')} | {default} | {help_text.replace('|', '/')} |")
    return "\n".join(out) + "\n"


def _layer_modules(patterns: tuple[str, ...]) -> str:
    """``gswa_plugin.tools.*`` -> ``tools/``, ``gswa_plugin.adapters._*`` -> ``adapters/_*``."""
    shown: list[str] = []
    for pattern in patterns:
        name = pattern.removeprefix("gswa_plugin.") if pattern != "gswa_plugin" else "gswa_plugin/__init__"
        if name.endswith("._*"):
            name = name[:-3] + "/_*"
        elif name.endswith(".*"):
            name = name[:-2] + "/"
        shown.append(name)
    folders = {s.split("/")[0] for s in shown if "/" in s}
    return ", ".join(s for s in shown if s not in folders)


# --- architecture picture ------------------------------------------------------------------------
def render_architecture() -> str:
    """An inline SVG of the layers, top layer first, each with the modules it holds.

    Written as SVG text rather than with matplotlib: it is regenerated from the layer list at
    every build, needs no binary asset and no script (and no network, unlike a mermaid chart).
    """
    from html import escape

    from gswa_plugin._layers import LAYERS

    width, row, gap, left = 760, 46, 6, 150
    rows = list(reversed(LAYERS))
    height = len(rows) * (row + gap) + 28
    # the core in green, the facade in grey, what is built on the public API in blue and yellow
    fills = {"tools": "#e8f0fe", "integrations": "#e8f0fe", "cli": "#e8f0fe", "testing": "#fef7e0", "public facade": "#f1f3f4"}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" font-family="sans-serif" style="max-width:100%;height:auto" aria-label="gswa_plugin layers">',
        '<text x="4" y="16" font-size="13" fill="#555">imports flow downwards only (top layer first)</text>',
    ]
    for i, (name, what, patterns) in enumerate(rows):
        y = 26 + i * (row + gap)
        fill = fills.get(name, "#e6f4ea")
        mods = _layer_modules(patterns)
        out += [
            f'<rect x="0" y="{y}" width="{width}" height="{row}" rx="6" fill="{fill}" stroke="#999"/>',
            f'<text x="10" y="{y + 19}" font-size="15" font-weight="bold">{escape(name)}</text>',
            f'<text x="{left}" y="{y + 19}" font-size="14" font-family="monospace">{escape(mods)}</text>',
            f'<text x="{left}" y="{y + 37}" font-size="13" fill="#444">{escape(what)}</text>',
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- hooks reference ---------------------------------------------------------------------------
def hook_signature(name: str) -> str:
    """``def name(args) -> ret`` exactly as ``inspect.signature`` gives it, annotations unquoted
    (the spec module uses postponed annotations, so they are strings)."""
    from gswa_plugin import hookspecs

    return f"def {name}{inspect.signature(getattr(hookspecs, name))}".replace("'", "")


def _hook_options(fn: Callable[..., Any]) -> str:
    opts = getattr(fn, "gswa_spec", None) or {}
    named = [k for k in ("firstresult", "historic", "warn_on_impl") if opts.get(k)]
    return ", ".join(f"`{k}=True`" for k in named)


def _rst_to_markdown(text: str) -> str:
    """``:class:`~a.b.C``` -> `` `C` ``, ````x```` -> `` `x` ``."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _docstring_markdown(doc: str) -> str:
    """A hookspec docstring (prose plus ``:param x:`` / ``:return:`` lines) as markdown."""
    lines = _rst_to_markdown(inspect.cleandoc(doc)).splitlines()
    prose: list[str] = []
    fields: list[str] = []
    for line in lines:
        m = re.match(r":param (\w+):\s*(.*)", line)
        r = re.match(r":returns?:\s*(.*)", line)
        if m:
            fields.append(f"- **`{m.group(1)}`**: {m.group(2)}")
        elif r:
            fields.append(f"- **returns**: {r.group(1)}")
        elif fields and line.startswith(" "):
            fields[-1] += " " + line.strip()
        else:
            prose.append(line)
    body = "\n".join(prose).strip()
    return body + ("\n\n" + "\n".join(fields) if fields else "")


def render_hooks_reference() -> str:
    """One section per hook, in the order of the spec module: signature, options, docstring."""
    from gswa_plugin import hookspecs

    names = sorted(hookspecs.HOOK_NAMES, key=lambda n: getattr(hookspecs, n).__code__.co_firstlineno)
    out = []
    for name in names:
        fn = getattr(hookspecs, name)
        opts = _hook_options(fn)
        out += [
            f"## `{name}`",
            "",
            "```python",
            "@hookimpl" + ("  # spec: " + opts.replace("`", "") if opts else ""),
            hook_signature(name) + ":",
            "```",
            "",
            _docstring_markdown(fn.__doc__ or ""),
            "",
        ]
    return "\n".join(out)


# --- adapters table ----------------------------------------------------------------------------
def render_adapters_table() -> str:
    """The built-in adapters (third-party plugins left out): thumbnail position, summary, hosts."""
    import os

    from gswa_plugin import plugins

    before = os.environ.get(plugins.PLUGINS_ENV)
    os.environ[plugins.PLUGINS_ENV] = ""
    plugins.reset_plugin_manager()
    try:
        registry = plugins.adapters()
    finally:
        if before is None:
            del os.environ[plugins.PLUGINS_ENV]
        else:
            os.environ[plugins.PLUGINS_ENV] = before
        plugins.reset_plugin_manager()
    out = ["| adapter | thumbnail | per-view summary | hosts |", "|---|---|---|---|"]
    for name, adapter in registry.items():
        summary = "CLS token" if adapter.has_cls else "mean of the view's tokens"
        out.append(f"| `{name}` | {adapter.global_position} | {summary} | {adapter.description} |")
    return "\n".join(out) + "\n"


RENDERERS: dict[str, Callable[[], str]] = {
    CONFIG_MARKER: render_config_reference,
    HOOKS_MARKER: render_hooks_reference,
    ADAPTERS_MARKER: render_adapters_table,
    DECLARE_MARKER: render_declare_reference,
    ARCHITECTURE_MARKER: render_architecture,
}


def render(markdown: str) -> str:
    """Replace every generation marker in a page's markdown."""
    for marker, fn in RENDERERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, fn())
    return markdown


# --- nav ---------------------------------------------------------------------------------------
def prune_nav(nav: Any, docs_dir: Path) -> Any:
    """The nav without entries whose page is missing (sections left empty are dropped)."""
    if isinstance(nav, list):
        kept = [prune_nav(item, docs_dir) for item in nav]
        return [k for k in kept if k not in (None, [], {})]
    if isinstance(nav, dict):
        out = {}
        for title, value in nav.items():
            pruned = prune_nav(value, docs_dir)
            if pruned not in (None, [], {}):
                out[title] = pruned
        return out or None
    if isinstance(nav, str) and nav.endswith(".md") and "://" not in nav:
        if not (docs_dir / nav).is_file():
            log.info("nav: leaving out %s (no such page yet)", nav)
            return None
    return nav


def nav_pages(nav: Any) -> list[str]:
    """Every page path in a nav."""
    if isinstance(nav, list):
        return [p for item in nav for p in nav_pages(item)]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    return [nav] if isinstance(nav, str) and nav.endswith(".md") else []


# --- mkdocs events -----------------------------------------------------------------------------
def on_config(config: Any) -> Any:
    if config.nav:
        config.nav = prune_nav(config.nav, Path(config.docs_dir))
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render(markdown)

