"""Tools built on the public API, one module each: the demo, weight pictures, inspection
experiments (tile removal, ablation, diagnosis), the influence check, the cost benchmark, the
weight diagnostics, InternVL2 checkpoint conversion, and loading hosts for them.

Nothing in the core imports from here; the CLI ([`gswa_plugin.cli`][gswa_plugin.cli]) and the integrations
do. Each module imports its heavier dependencies (matplotlib, transformers models) lazily.
"""
