"""The layers of the package, bottom to top: a module may import only from its own layer or below.

``tests/test_architecture.py`` enforces it (every import, lazy ones included, and no import
circle at all); the docs' architecture page draws its picture from this list. A new module must
be placed here, or the test fails.

Each layer is ``(name, what it holds, module patterns)``; a pattern ending in ``.*`` covers a
package's modules, and the most specific pattern wins.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "foundation",
        "errors, the settings schema mechanism, the version, host-side array helpers, transformers processor helpers",
        ("gswa_plugin._version", "gswa_plugin._layers", "gswa_plugin._host", "gswa_plugin.errors", "gswa_plugin.schema", "gswa_plugin.hf"),
    ),
    ("config", "GSWAConfig and the declaration schema: checks its own fields only", ("gswa_plugin.config",)),
    ("layout", "TileLayout, TileBatch: how views split into images", ("gswa_plugin.layout",)),
    ("weighting", "the GSWA math: summaries -> one weight per view; the token budget; no host code", ("gswa_plugin.weighting", "gswa_plugin.budget")),
    ("handle", "GSWAHandle: model + adapter + config + module, per-model state", ("gswa_plugin.handle",)),
    (
        "application",
        "application modes (embed, value, attn_bias) and the adapter base class and helpers",
        ("gswa_plugin.apply", "gswa_plugin.adapters", "gswa_plugin.adapters._*"),
    ),
    ("hookspecs", "the pluggy hook specifications: the whole plugin surface", ("gswa_plugin.hookspecs",)),
    (
        "built-in plugins",
        "one adapter per host family, the built-in variants: registered through the hooks",
        ("gswa_plugin.adapters.*", "gswa_plugin.builtin"),
    ),
    ("plugins", "plugin manager, entry points, cached registries, registry checks", ("gswa_plugin.plugins",)),
    ("api", "enable, disable, last_weights, set_tiles", ("gswa_plugin.api",)),
    ("checkpoint", "save and load GSWA's own weights and config", ("gswa_plugin.checkpoint",)),
    ("public facade", "what import gswa_plugin exposes (gswa_plugin.__all__)", ("gswa_plugin",)),
    (
        "testing",
        "tiny real hosts, stand-ins for remote-code hosts, the public adapter contract check",
        ("gswa_plugin.testing", "gswa_plugin.testing.*"),
    ),
    (
        "tools",
        "demo, pictures, inspection, influence, cost benchmark, diagnostics, conversion",
        ("gswa_plugin.tools", "gswa_plugin.tools.*"),
    ),
    (
        "integrations",
        "host frameworks: transformers Trainer, lmms-engine, llava, lmms-eval",
        ("gswa_plugin.integrations", "gswa_plugin.integrations.*"),
    ),
    ("cli", "the gswa command line", ("gswa_plugin.cli", "gswa_plugin.cli.*")),
)


def _matches(pattern: str, module: str) -> bool:
    if pattern.endswith("._*"):  # private modules of a package
        return module.startswith(pattern[:-1])
    if pattern.endswith(".*"):  # any module under a package
        return module.startswith(pattern[:-1])
    return module == pattern


def layer_of(module: str) -> int | None:
    """Index in [`LAYERS`][gswa_plugin._layers.LAYERS] of a dotted module name (``None`` when no pattern covers it); the
    longest matching pattern decides."""
    found = [(len(p), i) for i, (_, _, patterns) in enumerate(LAYERS) for p in patterns if _matches(p, module)]
    return max(found)[1] if found else None
