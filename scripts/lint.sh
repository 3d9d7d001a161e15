#!/usr/bin/env bash
# Quality gates: module docs render and the shell scripts parse.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"
cd "$HM_ROOT"
echo "==> ansible-doc renders every module"
for m in plugins/modules/*.py; do
    [ -e "$m" ] || continue
    name=$(basename "$m" .py)
    ansible-doc "hardened.mailhost.$name" >/dev/null
done
for s in scripts/*.sh .ci/run; do bash -n "$s"; done
