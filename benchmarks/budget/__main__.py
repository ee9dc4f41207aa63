"""Every table and plot of the docs page 'Token budget', in one command: ``python -m benchmarks.budget``.

Runs, one after the other: the speed benchmark (``speed.py``), the needle quality at 28 px tiles
(``quality.py``, 4 seeds) and at 56 px tiles with the three in-tile scores (3 seeds). Each writes
its files into ``docs/assets/``. About 20 minutes of one CPU thread.
"""

from __future__ import annotations

from benchmarks.budget import quality, speed


def main() -> None:
    speed.main([])
    quality.main(["--seeds", "0", "1", "2", "3"])
    quality.main(["--seeds", "0", "1", "2", "--tile", "56", "--in-tile", "norm", "summary", "thumbnail",
                  "--name", "budget_quality_56"])


if __name__ == "__main__":
    main()
