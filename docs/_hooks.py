"""mkdocs hooks (``hooks:`` in mkdocs.yml): the generated parts of the docs.

* ``<!-- gswa:config-reference -->`` becomes the configuration reference, rendered from the
  ``gswa_plugin.config.GSWAConfig`` schema (names, types, defaults, limits, help), so the
  reference is never copied by hand.
* ``<!-- gswa:architecture -->`` becomes the picture of the package's layers, drawn from
  ``gswa_plugin._layers.LAYERS`` (the list ``tests/test_architecture.py`` enforces).
* ``<!-- gswa:declare-reference -->`` becomes the table of every ``declare:`` key, from
  ``gswa_plugin.config.HostDeclaration``.
* ``<!-- gswa:hooks-reference -->`` becomes one section per hook of
  ``gswa_plugin.hookspecs`` with its exact signature and its docstring.
* ``<!-- gswa:adapters-table -->`` becomes the table of built-in adapters (thumbnail position,
  summary, hosts), read from the registry.
* ``<!-- gswa:exports -->`` becomes the table of what ``import gswa_plugin`` exports
  (``gswa_plugin.__all__``) and where each name is defined.
* ``<!-- gswa:pipeline -->`` becomes the Concepts page's picture of where GSWA sits (inline SVG:
  it renders offline, unlike a mermaid chart, whose library the theme fetches from a CDN).
* ``<!-- gswa:ci-steps -->`` and ``<!-- gswa:tested-hosts -->`` become the "What is measured"
  tables: every CI step with its own description (the comment that opens it), and the contract
  case (``tests/host_cases/``) of every built-in adapter.
* Nav entries whose page does not exist are left out (and logged), so that a page planned in the
  nav but not written yet does not break ``mkdocs build --strict``. The tests check that every
  page under ``docs/`` is in the nav.

The tests import this file to check what it renders.
"""

from __future__ import annotations

import ast
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
EXPORTS_MARKER = "<!-- gswa:exports -->"
PIPELINE_MARKER = "<!-- gswa:pipeline -->"
CI_STEPS_MARKER = "<!-- gswa:ci-steps -->"
TESTED_HOSTS_MARKER = "<!-- gswa:tested-hosts -->"


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

    # a list, not a table: four columns of dotted keys, types and long help do not fit 1280 px
    out = []
    for key, type_name, default, help_text in _settings_rows(HostDeclaration, ""):
        depth = key.count(".")
        facts = ", ".join(f for f in (type_name.replace("|", "or"), default) if f)
        out.append(f"{'    ' * depth}- **`{key}`** ({facts}): {help_text}")
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
    fills = {
        "tools": "#e8f0fe",
        "integrations": "#e8f0fe",
        "cli": "#e8f0fe",
        "testing": "#fef7e0",
        "public facade": "#f1f3f4",
    }
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
    """``:class:`~a.b.C``` -> `` `C` ``, ````x```` -> `` `x` ``; cross-references stay links."""
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
def builtin_adapters() -> dict[str, Any]:
    """The registered adapters of the built-in plugins only (installed third-party plugins left out)."""
    import os

    from gswa_plugin import plugins

    before = os.environ.get(plugins.PLUGINS_ENV)
    os.environ[plugins.PLUGINS_ENV] = ""
    plugins.reset_plugin_manager()
    try:
        return plugins.adapters()
    finally:
        if before is None:
            del os.environ[plugins.PLUGINS_ENV]
        else:
            os.environ[plugins.PLUGINS_ENV] = before
        plugins.reset_plugin_manager()


def render_adapters_table() -> str:
    """The built-in adapters (third-party plugins left out): thumbnail position, summary, hosts."""
    registry = builtin_adapters()
    out = ["| adapter | thumbnail | per-view summary | hosts |", "|---|---|---|---|"]
    for name, adapter in registry.items():
        summary = "CLS token" if adapter.has_cls else "mean of the view's tokens"
        out.append(f"| `{name}` | {adapter.global_position} | {summary} | {adapter.description} |")
    return "\n".join(out) + "\n"


# --- what `import gswa_plugin` exports ------------------------------------------------------------
def _public_module(name: str, obj: Any) -> str:
    """The public module a name is defined in: ``gswa_plugin.adapters._base`` -> ``gswa_plugin.adapters``
    (which exports it); a name made by another library (``hookimpl``) -> the gswa module holding it."""
    import importlib

    from gswa_plugin import hookspecs

    module = getattr(obj, "__module__", None) or "gswa_plugin"
    if not module.startswith("gswa_plugin"):
        return hookspecs.__name__ if getattr(hookspecs, name, None) is obj else "gswa_plugin"
    parts = module.split(".")
    while any(p.startswith("_") for p in parts[1:]):
        parts.pop()
    public = ".".join(parts)
    return public if getattr(importlib.import_module(public), name, None) is obj else module


def render_exports() -> str:
    """The table of ``gswa_plugin.__all__``: each name, what it is, and the module defining it."""
    import gswa_plugin

    out = [
        "## What `import gswa_plugin` exports",
        "",
        "Generated from `gswa_plugin.__all__` when the docs are built.",
        "",
        "| name | kind | defined in |",
        "|---|---|---|",
    ]
    for name in sorted(gswa_plugin.__all__, key=lambda n: (n.startswith("_"), n.lower())):
        obj = getattr(gswa_plugin, name)
        if name == "__version__":
            out.append(f"| `{name}` | version string (`{obj}`) | `gswa_plugin._version` |")
            continue
        if inspect.isclass(obj):
            kind = "error class" if issubclass(obj, Exception) else "class"
        elif callable(obj):
            kind = "function" if inspect.isfunction(obj) else "decorator"
        else:
            kind = type(obj).__name__
        module = _public_module(name, obj)
        if kind == "error class":
            link = f"[`{name}`](troubleshooting.md#{name.lower()})"
        else:
            link = f"[`{name}`][gswa_plugin.{name}]" if kind != "decorator" else f"`{name}`"
        out.append(f"| {link} | {kind} | `{module}` |")
    return "\n".join(out) + "\n"


# --- the Concepts page's picture -----------------------------------------------------------------
def render_pipeline() -> str:
    """An inline SVG of where GSWA sits between the vision encoder and the language model.

    Drawn as SVG text (no script, no network: a mermaid chart needs its library, fetched from a
    CDN by the theme) at a size where its labels are as large as the page's own text.
    """
    from html import escape

    boxes = {  # name: (x, y, w, h, fill, lines)
        "image": (10, 30, 110, 54, "#f1f3f4", ["image"]),
        "proc": (170, 30, 220, 54, "#f1f3f4", ["processor", "T tiles + thumbnail"]),
        "enc": (440, 30, 250, 54, "#f1f3f4", ["vision encoder", "(every view)"]),
        "proj": (250, 170, 230, 54, "#f1f3f4", ["pixel shuffle", "+ projector"]),
        "gswa": (530, 170, 200, 54, "#e6f4ea", ["GSWA", "summaries → weights"]),
        "lm": (560, 320, 200, 54, "#e8f0fe", ["language model"]),
    }
    mul = (430, 347, 24)
    edges = [  # (x1, y1, x2, y2, label lines, label x, label y, anchor)
        (120, 57, 168, 57, [], 0, 0, "start"),
        (390, 57, 438, 57, [], 0, 0, "start"),
        (500, 84, 400, 168, ["patch tokens"], 430, 120, "end"),
        (600, 84, 620, 168, ["one summary per view", "(CLS or mean)"], 620, 116, "start"),
        (365, 224, 414, 330, ["features", "[views, tokens, dim]"], 372, 280, "end"),
        (600, 224, 452, 336, ["w₁ … w_T", "(thumbnail: 1)"], 585, 262, "start"),
        (454, 347, 558, 347, [], 0, 0, "start"),
    ]
    width, height = 770, 390
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" font-family="sans-serif" style="max-width:100%;height:auto" '
        'aria-label="where GSWA sits: processor, vision encoder, projector and GSWA, then the language model">',
        '<defs><marker id="gswa-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    for x, y, w, h, fill, lines in boxes.values():
        out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" stroke="#888"/>')
        cy = y + h / 2 - (len(lines) - 1) * 9
        for i, line in enumerate(lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            size = 16 if i == 0 else 14
            out.append(
                f'<text x="{x + w / 2}" y="{cy + i * 19 + 5}" font-size="{size}" text-anchor="middle"{weight}>'
                f"{escape(line)}</text>"
            )
    cx, cy, r = mul
    out.append(f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="#fef7e0" stroke="#888"/>')
    out.append(f'<text x="{cx}" y="{cy + 7}" font-size="22" text-anchor="middle">×</text>')
    for x1, y1, x2, y2, label, lx, ly, anchor in edges:
        out.append(
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#555" stroke-width="1.6" '
            'marker-end="url(#gswa-arrow)"/>'
        )
        for i, line in enumerate(label):
            out.append(
                f'<text x="{lx}" y="{ly + i * 18}" font-size="14" fill="#333" text-anchor="{anchor}">'
                f"{escape(line)}</text>"
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- what is measured ------------------------------------------------------------------------------
def _leading_comment(path: Path) -> str:
    """The comment block that opens a shell script (after the shebang), as one paragraph."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines).replace("|", "/")


def render_ci_steps() -> str:
    """The CI steps (``.ci/run`` and every ``.ci/steps/*.sh``), each with what it runs."""
    root = Path(__file__).resolve().parents[1]
    out = ["| CI step | what it runs |", "|---|---|"]
    out.append(f"| `.ci/run` | {_leading_comment(root / '.ci' / 'run')} |")
    for step in sorted((root / ".ci" / "steps").glob("*.sh")):
        out.append(f"| `.ci/steps/{step.name}` | {_leading_comment(step)} |")
    return "\n".join(out) + "\n"


def render_tested_hosts() -> str:
    """Per registered adapter, its contract case (``tests/host_cases``) and the tiny hosts it builds."""
    root = Path(__file__).resolve().parents[1]
    cases = {p.stem: p for p in (root / "tests" / "host_cases").glob("*.py") if not p.stem.startswith("_")}
    out = ["| adapter | contract case | tiny host (random weights, built in code) |", "|---|---|---|"]
    for name in builtin_adapters():
        case = cases.get(name)
        if case is None:
            out.append(f"| `{name}` | — | — |")
            continue
        # the tiny model builders it imports (not their processors, configs or tokenizers)
        builders = sorted(
            alias.name
            for node in ast.walk(ast.parse(case.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gswa_plugin.testing")
            for alias in node.names
            if alias.name.startswith("tiny_") and not alias.name.endswith(("_processor", "_config", "_tokenizer"))
        )
        hosts = ", ".join(f"`{b}`" for b in builders) or "see the case"
        out.append(f"| `{name}` | `tests/host_cases/{case.name}` | {hosts} |")
    return "\n".join(out) + "\n"


COMPAT_MARKER = "<!-- gswa:compatibility -->"

#: Short column headers of the compatibility table (the legend below it says what each runs).
_COMPAT_HEADERS = {
    "gc-reentrant": "ckpt reentrant",
    "gc-non-reentrant": "ckpt non-reentrant",
    "greedy": "greedy",
    "sample": "sampling",
    "beams": "beams",
    "deepcopy": "deepcopy",
    "save-pretrained": "save_pretrained",
    "compile": "compile",
    "threads": "threads",
    "direct-features": "direct call",
}


def render_compatibility() -> str:
    """The compatibility matrix of gswa_plugin.testing.compat, as tests/test_compat.py runs it:
    which modes each built-in adapter supports, then one row per setting with the cells that do
    not hold (a table of adapters x settings is too wide to read at 1280 px)."""
    from gswa_plugin.testing.compat import OUTSIDE_MATRIX, SETTINGS, cell_status, supported_modes

    registry = builtin_adapters()
    modes_of = {name: supported_modes(a) for name, a in registry.items() if name not in OUTSIDE_MATRIX}
    n_cells = sum(len(m) for m in modes_of.values())
    lines = ["| adapter | modes it supports |", "|---|---|"]
    lines += [f"| `{name}` | {', '.join(modes)} |" for name, modes in modes_of.items()]
    outside = [f"- `{name}`: {why}." for name, why in OUTSIDE_MATRIX.items() if name in registry]
    if outside:
        lines += ["", "Built-in adapters outside the matrix:", "", *outside]
    lines += [
        "",
        f"Each setting runs on every adapter of the table above in every mode it supports ({n_cells} cells per setting).",
        "",
        "| setting | what runs | what the test asserts | result |",
        "|---|---|---|---|",
    ]
    notes: list[str] = []
    for setting in SETTINGS:
        odd = [
            (name, mode, *cell_status(name, mode, setting.name))
            for name, modes in modes_of.items()
            for mode in modes
        ]
        odd = [cell for cell in odd if cell[2] != "yes"]
        if odd:
            refs = []
            for name, mode, status, why in odd:
                notes.append(f"`{name}`, {mode}, {_COMPAT_HEADERS[setting.name]}: {status}: {why}")
                refs.append(f"`{name}`/{mode}: {status} ({len(notes)})")
            result = f"yes in {n_cells - len(odd)} of {n_cells}; " + "; ".join(refs)
        else:
            result = f"yes in all {n_cells}"
        lines.append(f"| **{_COMPAT_HEADERS[setting.name]}** | {setting.title} | {setting.holds} | {result} |")
    if notes:
        lines += ["", "Exceptions:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[], str]] = {
    CONFIG_MARKER: render_config_reference,
    HOOKS_MARKER: render_hooks_reference,
    ADAPTERS_MARKER: render_adapters_table,
    DECLARE_MARKER: render_declare_reference,
    ARCHITECTURE_MARKER: render_architecture,
    EXPORTS_MARKER: render_exports,
    PIPELINE_MARKER: render_pipeline,
    CI_STEPS_MARKER: render_ci_steps,
    TESTED_HOSTS_MARKER: render_tested_hosts,
    COMPAT_MARKER: render_compatibility,
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
