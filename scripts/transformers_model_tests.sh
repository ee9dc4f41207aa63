#!/usr/bin/env bash
# Run transformers' own model tests for GSWA's supported families with GSWA enabled on every
# model they build (the pytest plugin gswa_plugin.testing.hf_suite), one pytest run per family.
#
#   scripts/transformers_model_tests.sh TRANSFORMERS_TESTS_DIR [family ...]
#
# TRANSFORMERS_TESTS_DIR is a folder holding transformers' `tests/` package (a source checkout of
# the installed version's tag, e.g. `git clone --depth 1 -b v$(python -c 'import transformers as
# t; print(t.__version__)') https://github.com/huggingface/transformers`). transformers' wheel
# ships no tests; its sdist has the top-level `tests/test_*_common.py` and `tests/test_*_mixin.py`
# but not `tests/generation/` or `tests/models/`, which the model tests import. The test files
# need `parameterized` (pip install parameterized); `pytest-timeout` is used when installed.
#
# Families (default: all the built-in adapters' transformers families): internvl llava_next
# llava_onevision idefics3 smolvlm aya_vision. Each runs
# TRANSFORMERS_TESTS_DIR/tests/models/<family>/test_modeling_<family>.py.
#
# Environment:
#   GSWA_HF_SUITE_MODE    embed | value | attn_bias (default value)
#   GSWA_HF_SUITE_CONFIG  JSON merged into the GSWA config, e.g. '{"hidden_size": 64}'
#   GSWA_HF_SUITE_DISABLE 1: same runs without GSWA (a baseline for the installed transformers)
#   PYTHON                interpreter with gswa-plugin and transformers (default: python)
#   RUN_TIMEOUT           seconds per family run (default 600)
#   TEST_TIMEOUT          seconds per test with pytest-timeout (default 300)
#   LOG_DIR               where each run's full output goes (default: a new temporary folder)
#   EXPECTED_FAILURES     file of test names (one per line, '#' comments, shell globs allowed,
#                         e.g. '*::test_model_is_small') that may fail: the ones listed in the
#                         docs as impossible with a plugin installed. Without it, any failure counts.
#   PYTEST_ARGS           extra pytest arguments (e.g. '-k "not generate"')
#   BASELINE_LOG_DIR      LOG_DIR of an earlier GSWA_HF_SUITE_DISABLE=1 run: a test that failed
#                         there too fails without GSWA (test files of another transformers
#                         version, a missing optional package) and is marked 'baseline'
#
# Exit status: 0 when every run finished and every failing test is listed in EXPECTED_FAILURES
# or failed in the baseline, 1 otherwise, 2 for a usage error. The summary prints, per family,
# the pytest counts, the wall time and the failing tests (marked 'expected', 'baseline' or
# 'UNEXPECTED').
set -uo pipefail

usage() { sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; }
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  usage
  [ $# -lt 1 ] && exit 2 || exit 0
fi
TESTS_ROOT="$(cd "$1" && pwd)" || { echo "no folder $1" >&2; exit 2; }
shift
if [ ! -f "$TESTS_ROOT/tests/test_modeling_common.py" ]; then
  echo "$TESTS_ROOT/tests/test_modeling_common.py not found: pass the folder that holds transformers' tests/" >&2
  exit 2
fi
FAMILIES=("$@")
[ ${#FAMILIES[@]} -eq 0 ] && FAMILIES=(internvl llava_next llava_onevision idefics3 smolvlm aya_vision)
PYTHON="${PYTHON:-python}"
RUN_TIMEOUT="${RUN_TIMEOUT:-600}"
TEST_TIMEOUT="${TEST_TIMEOUT:-300}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t gswa-hf-suite.XXXXXX)}"
mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"
MODE="${GSWA_HF_SUITE_MODE:-value}"
export GSWA_HF_SUITE_MODE="$MODE"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
LABEL="$MODE"
TAG="$MODE"
if [ "${GSWA_HF_SUITE_DISABLE:-0}" = "1" ]; then
  LABEL="baseline (no GSWA)"
  TAG="baseline"
fi

EXPECTED=()
if [ -n "${EXPECTED_FAILURES:-}" ]; then
  while IFS= read -r line; do
    line="${line%%#*}"
    line="$(echo "$line" | xargs)"
    [ -n "$line" ] && EXPECTED+=("$line")
  done < "$EXPECTED_FAILURES"
fi
is_expected() {
  local t=$1 pat
  for pat in "${EXPECTED[@]+"${EXPECTED[@]}"}"; do
    # shellcheck disable=SC2053
    [[ $t == $pat ]] && return 0
  done
  return 1
}

TIMEOUT_ARGS=()
if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
  TIMEOUT_ARGS=(--timeout "$TEST_TIMEOUT")
fi
EXTRA=()
[ -n "${PYTEST_ARGS:-}" ] && eval "EXTRA=(${PYTEST_ARGS})"

echo "transformers model tests with GSWA: mode $LABEL, $("$PYTHON" -c 'import transformers; print("transformers", transformers.__version__)'), tests from $TESTS_ROOT"
echo "logs: $LOG_DIR"
status=0
SUMMARY=()
for fam in "${FAMILIES[@]}"; do
  file="tests/models/$fam/test_modeling_$fam.py"
  log="$LOG_DIR/${fam}_${TAG}.log"
  if [ ! -f "$TESTS_ROOT/$file" ]; then
    SUMMARY+=("$fam: MISSING $file")
    status=1
    continue
  fi
  start=$(date +%s)
  (cd "$TESTS_ROOT" && timeout "$RUN_TIMEOUT" "$PYTHON" -m pytest -p gswa_plugin.testing.hf_suite "$file" \
    -q -rfE -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning \
    "${TIMEOUT_ARGS[@]+"${TIMEOUT_ARGS[@]}"}" "${EXTRA[@]+"${EXTRA[@]}"}") > "$log" 2>&1
  rc=$?
  wall=$(( $(date +%s) - start ))
  counts="$(grep -E '^[0-9]+ (passed|failed)|^(FAILED|ERROR|=+ .*(passed|failed|error))' "$log" | grep -E '(passed|failed|error)' | tail -1 | sed 's/^=* *//; s/ *=*$//')"
  [ $rc -eq 124 ] && counts="TIMED OUT after ${RUN_TIMEOUT}s; $counts"
  SUMMARY+=("$fam: ${counts:-no pytest summary (rc $rc)} [${wall}s]")
  [ $rc -ne 0 ] && [ $rc -ne 1 ] && status=1
  baseline_log="${BASELINE_LOG_DIR:-}/${fam}_baseline.log"
  while IFS= read -r test; do
    [ -z "$test" ] && continue
    if is_expected "$test"; then
      SUMMARY+=("    expected    $test")
    elif [ -n "${BASELINE_LOG_DIR:-}" ] && [ -f "$baseline_log" ] \
      && grep -qxF -e "FAILED $test" -e "ERROR $test" < <(sed -E 's/ - .*$//' "$baseline_log"); then
      SUMMARY+=("    baseline    $test")
    else
      SUMMARY+=("    UNEXPECTED  $test")
      status=1
    fi
  done < <(grep -E '^(FAILED|ERROR) ' "$log" | sed -E 's/^(FAILED|ERROR) //; s/ - .*$//' | sort -u)
  engaged="$(grep -E '^GSWA enabled on' "$log" | tail -1)"
  [ -n "$engaged" ] && SUMMARY+=("    $engaged")
done

echo
echo "==== summary (mode $LABEL) ===="
printf '%s\n' "${SUMMARY[@]}"
exit $status
