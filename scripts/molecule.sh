#!/usr/bin/env bash
# Run Molecule scenarios one after the other (2 cores: running them side by
# side only makes each slower) and print a timing table and a closing count.
# Usage: scripts/molecule.sh [scenario ...]   (default: every scenario)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"
cd "$HM_ROOT"

scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    # Order: cheap and foundational first, the whole-host story last.
    for s in sshd_2fa sudo_pin ca postfix dovecot site; do
        [ -f "molecule/$s/molecule.yml" ] && scenarios+=("$s")
    done
fi

passed=0 failed=0 report=()
for s in "${scenarios[@]}"; do
    echo "==> molecule test -s $s"
    t0=$SECONDS
    if molecule test -s "$s"; then
        passed=$((passed + 1)); verdict=passed
    else
        failed=$((failed + 1)); verdict=FAILED
        molecule destroy -s "$s" >/dev/null 2>&1 || true
    fi
    report+=("$(printf '%-10s %-7s %4d s' "$s" "$verdict" $((SECONDS - t0)))")
done
printf '%s\n' "==> scenario times" "${report[@]}"
echo "scenarios: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
