"""Token-budget benchmarks: ``speed.py`` (prefill and decode time) and ``quality.py`` (needle accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def plot_against_keep(path: Path, ylabel: str, draw: Callable[[Any], None]) -> None:
    """A small figure with ``keep`` on a log x axis; ``draw(ax)`` adds the lines. Nothing without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    draw(ax)
    ax.set_xlabel("keep (fraction of visual tokens)")
    ax.set_ylabel(ylabel)
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
