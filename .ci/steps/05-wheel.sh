#!/usr/bin/env bash
# The package as `pip install gswa-plugin` delivers it: build the sdist, build the wheel from that
# sdist, install the wheel (not editable) into a fresh virtual environment, then run `gswa demo`,
# the fast commands and a smoke subset of the tests from outside the checkout, so a file missing
# from the sdist or the wheel (package data such as default.yaml) fails here and not for a user.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m venv "$tmp/build-env"
"$tmp/build-env/bin/pip" install -q build
"$tmp/build-env/bin/python" -m build --outdir "$tmp/dist" .   # sdist, then the wheel built from it
ls "$tmp/dist"
wheel=$(ls "$tmp/dist"/gswa_plugin-*.whl)

python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q torch==2.13.0 "${wheel}[demo,test]"

# the tests, the recipes and pyproject's pytest settings, without the source tree: only the installed
# wheel can be imported
mkdir "$tmp/run"
cp -r tests "$tmp/run/tests"
cp -r recipes "$tmp/run/recipes"   # the recipes ship with the checkout, not the wheel
cp pyproject.toml "$tmp/run/"
cd "$tmp/run"
PATH="$tmp/venv/bin:$PATH"
python -c "import gswa_plugin, sys; p = gswa_plugin.__file__; print(p); sys.exit('site-packages' not in p)"
gswa version
gswa adapters
gswa schema > schema.json
gswa demo --out demo --max-new-tokens 2
test -s demo/gswa_weights.png
python -m pytest -q -p no:cacheprovider -m "slow or not slow" \
  tests/test_cli.py tests/test_cli_fast.py tests/test_cli_hosts.py tests/test_preflight.py tests/test_save_load.py
cd "$repo"
echo "05-wheel: ok"
