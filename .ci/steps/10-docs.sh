#!/usr/bin/env bash
# Docs: install the docs extra into the main virtual environment and build the site strictly
# (broken links, missing snippets, pages outside the nav and mkdocstrings warnings fail the build).
set -euo pipefail
cd "$(dirname "$0")/../.."
pip install -q -e ".[docs]"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir site
echo "docs built into site/"
