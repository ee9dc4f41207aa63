"""mkdocs hooks (``hooks:`` in mkdocs.yml): the generated parts of the docs.

* ``<!-- gswa:config-reference -->`` becomes the configuration reference, rendered from the
  :class:`gswa_plugin.config.GSWAConfig` dataclass (names, types, defaults, limits, help), so the
  reference is never copied by hand.
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

import dataclasses
import inspect
import logging
import re
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("mkdocs.hooks.gswa")

CONFIG_MARKER = "<!-- gswa:config-reference -->"
HOOKS_MARKER = "<!-- gswa:hooks-reference -->"
ADAPTERS_MARKER = "<!-- gswa:adapters-table -->"


# --- configuration reference -------------------------------------------------------------------
def _limits(meta: dict[str, Any]) -> str:
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "gt" in meta:
        parts.append(f"> {meta['gt']}")
    if "max_exclusive" in meta:
        parts.append(f"< {meta['max_exclusive']}")
    return "; ".join(parts)


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def render_config_reference() -> str:
    """Markdown for every field of ``GSWAConfig``: the default block, then one section per field."""
    from gswa_plugin.config import BLOCK_KEY, GSWAConfig, field_docs

    fields = {f.name: f for f in dataclasses.fields(GSWAConfig)}
    out = [
        f"Every key of the `{BLOCK_KEY}:` block, with its default. Unknown keys, wrong types and values "
        "out of range are all reported at once (`gswa check FILE`).",
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
            f"{_limits(dict(fields[name].metadata)) or '—'} |"
        )
    for name, type_name, default, help_text in docs:
        limits = _limits(dict(fields[name].metadata))
        out += [
            "",
            f"### `{name}` {{#{name.replace('_', '-')}}}",
            "",
            f"Type `{type_name}`, default `{_yaml_value(default)}`" + (f", {limits}." if limits else "."),
            "",
            help_text,
        ]
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

