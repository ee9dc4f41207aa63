"""``python -m gswa_plugin.training RECIPE.yaml [key=value ...]`` (what ``accelerate launch -m`` runs)."""

from __future__ import annotations

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
