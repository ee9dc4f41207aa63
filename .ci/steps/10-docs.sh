#!/usr/bin/env bash
# Docs: install the docs extra into the main virtual environment and build the site strictly
# (broken links, missing snippets, pages outside the nav and mkdocstrings warnings fail the build),
# then the screenshot test (tests/test_docs_screenshots.py, marked screenshots): the built site in
# headless Chromium from Debian's packages, offline, at 1280 px. It fails on raw Sphinx roles,
# unrendered diagrams, content wider than its column and requests leaving localhost.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Debian's Chromium, installed here because no machine starts with it (Playwright drives it; it
# downloads no browser of its own).
if ! command -v chromium >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
chromium --version

pip install -q -e ".[docs,screenshots]"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir site
echo "docs built into site/"

mkdir -p site-screenshots
GSWA_CHROMIUM="$(command -v chromium)" GSWA_DOCS_SITE=site GSWA_SCREENSHOTS_DIR=site-screenshots python -m pytest -q -m screenshots \
  tests/test_docs_screenshots.py
echo "screenshots of the main pages in site-screenshots/"
