"""``python -m gswa_plugin.cli`` runs the ``gswa`` command line."""

from gswa_plugin.cli import main

main()
