"""``python -m gswa_plugin.cli`` runs the ``gswa`` command line."""

from . import main

main()
