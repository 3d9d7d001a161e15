#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (.ci/run calls exactly this):
#   set-up, unit tests, quality gates, then every Molecule scenario on
#   Debian 12 and 13. Pass scenario names to run only those.
#
# The unit tests run on every core (pytest-xdist). The quality gates run
# beside the Molecule scenarios rather than before them: they spend most of
# their time waiting on ansible-test's own virtualenvs, and the scenarios
# spend theirs waiting on containers, so together they take little longer
# than the scenarios alone. Their output is printed after the scenarios', and
# either failing fails the suite.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
"$here/setup.sh"
# shellcheck source=scripts/env.sh
. "$here/env.sh"
cd "$HM_ROOT"

start=$SECONDS
echo "==> unit tests"
python -m pytest -q -n "${HM_UNIT_JOBS:-auto}" tests/unit
echo "==> unit tests took $((SECONDS - start)) s"

logs="$HM_CACHE_DIR/logs"
mkdir -p "$logs"
lint_start=$SECONDS
"$here/lint.sh" >"$logs/lint.log" 2>&1 &
lint_pid=$!
echo "==> quality gates started beside the scenarios (log: $logs/lint.log)"

molecule_rc=0
"$here/molecule.sh" "$@" || molecule_rc=$?

lint_rc=0
wait "$lint_pid" || lint_rc=$?
echo "==> quality gates (finished $((SECONDS - lint_start)) s after they started)"
if [ "$lint_rc" -eq 0 ]; then
    grep -E '^==> ' "$logs/lint.log" || true
    echo "quality gates: passed"
else
    cat "$logs/lint.log"
    echo "quality gates: FAILED (exit $lint_rc)"
fi
echo "==> whole suite took $SECONDS s"
[ "$molecule_rc" -eq 0 ] && [ "$lint_rc" -eq 0 ]
