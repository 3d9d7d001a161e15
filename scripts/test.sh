#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (.ci/run calls exactly this):
#   set-up, unit tests, quality gates, then every Molecule scenario on
#   Debian 12 and 13. Pass scenario names to run only those.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
"$here/setup.sh"
# shellcheck source=scripts/env.sh
. "$here/env.sh"
cd "$HM_ROOT"

start=$SECONDS
echo "==> unit tests"
python -m pytest -q tests/unit
echo "==> unit tests took $((SECONDS - start)) s"

"$here/lint.sh"
"$here/molecule.sh" "$@"
