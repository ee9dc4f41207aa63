"""Regenerate the docs' cost benchmark: ``python benchmarks/cost.py``.

Runs ``gswa bench`` at InternVL2-2B shapes and writes, for docs/benchmark.md:

* ``docs/assets/benchmark_table.md``: how it was measured and the tables (included by the page),
* ``docs/assets/benchmark_overhead.png``: GSWA's time ratio against tile count,
* ``docs/assets/benchmark.json``: every measurement.

Extra arguments go to ``gswa bench`` (e.g. ``--repeats 3`` or ``--device cuda --vision-layers 24
--text-layers 24`` on a GPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

from gswa_plugin.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "docs" / "assets"


def main(argv: list[str]) -> None:
    args = [
        "bench",
        "--markdown",
        str(ASSETS / "benchmark_table.md"),
        "--plot",
        str(ASSETS / "benchmark_overhead.png"),
        "--json",
        str(ASSETS / "benchmark.json"),
        "--threads",
        "1",
        *argv,
    ]
    app(args, standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
