"""Benchmarks of gswa-plugin (run from a checkout; not part of the installed package)."""
