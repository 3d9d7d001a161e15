#!/usr/bin/env bash
# Run Molecule scenarios and print a timing table and a closing count.
# Usage: scripts/molecule.sh [scenario ...]   (default: every scenario)
# HM_MOLECULE_JOBS=N runs N scenarios side by side (default 3: most of a
# scenario is waiting on package downloads, PAM failure delays, lockout
# timers and TLS handshakes, so three fit on two cores; measured on a 2-core
# machine, three side by side kept every timing-sensitive test green). Each scenario's output goes to
# $HM_CACHE_DIR/logs/<scenario>.log and is printed when it fails.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"
cd "$HM_ROOT"

jobs=${HM_MOLECULE_JOBS:-3}
logs="$HM_CACHE_DIR/logs"
mkdir -p "$logs"

scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    # Longest first, so the pool drains evenly.
    for s in site cert_portal postfix dovecot sudo_pin sshd_2fa ca; do
        [ -f "molecule/$s/molecule.yml" ] && scenarios+=("$s")
    done
fi

run_one() {
    local s=$1 t0=$SECONDS
    if molecule test -s "$s" >"$logs/$s.log" 2>&1; then
        echo "passed $((SECONDS - t0))" >"$logs/$s.result"
    else
        molecule destroy -s "$s" >>"$logs/$s.log" 2>&1 || true
        echo "FAILED $((SECONDS - t0))" >"$logs/$s.result"
    fi
}

# A scenario's log without the terminal colour codes.
plain_log() {
    sed 's/\x1b\[[0-9;]*m//g' "$logs/$1.log"
}

# What a reader of CI needs from a failed scenario, first: the failing step,
# the failed tests with their assertion messages, then the failed Ansible
# tasks. (The tail of the log alone is mostly the destroy step.)
report_failure() {
    local s=$1 clean
    clean=$(mktemp)
    plain_log "$s" >"$clean"
    echo "==> failed scenario $s: steps"
    grep -E ' ➜ [a-z_]+: Executed: Failed' "$clean" | sort -u
    # Molecule's box wraps pytest's banners: "==== FAILURES" and its closing
    # "====" may land on two lines, so only the opening half is matched.
    if grep -q '=\{5,\} \(FAILURES\|ERRORS\)' "$clean"; then
        echo "==> failed scenario $s: pytest failures (first 400 lines)"
        sed -n '/=\{5,\} \(FAILURES\|ERRORS\)/,/short test summary info/p' "$clean" | head -n 400
        echo "==> failed scenario $s: pytest summary"
        sed -n '/short test summary info/,/=\{5,\} .* in [0-9.]*s/p' "$clean" | head -n 60
    fi
    # Molecule draws a box around Ansible's output: "  │ fatal: [host]: ...".
    if grep -qE '^[ │]*(fatal|failed): ' "$clean"; then
        echo "==> failed scenario $s: failed Ansible tasks (the last ones, each with its task line)"
        grep -E -B2 -A12 '^[ │]*(fatal|failed): ' "$clean" | tail -n 150
    fi
    grep -A20 'Idempotence test failed' "$clean" | head -n 40
    echo "==> failed scenario $s: last 60 lines of $logs/$s.log"
    tail -n 60 "$clean"
    rm -f "$clean"
}

start=$SECONDS
running=0
for s in "${scenarios[@]}"; do
    rm -f "$logs/$s.result"
    echo "==> molecule test -s $s (log: $logs/$s.log)"
    run_one "$s" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

passed=0 failed=0
echo "==> scenario times"
for s in "${scenarios[@]}"; do
    read -r verdict secs <"$logs/$s.result" 2>/dev/null || { verdict=FAILED; secs=0; }
    printf '%-10s %-7s %4d s\n' "$s" "$verdict" "$secs"
    if [ "$verdict" = passed ]; then
        passed=$((passed + 1))
        # The verifier's own pytest summary, for the record, and the tests
        # that failed once and passed on their rerun (pytest-rerunfailures).
        plain_log "$s" | grep -E '=+ .*(passed|failed).* in [0-9.]+s' | tail -n 1 | sed 's/^[^=]*/           /'
        plain_log "$s" | grep -oE 'RERUN [^ ]+' | sort -u | sed 's/^RERUN /           flaky, passed on its rerun: /'
    else
        failed=$((failed + 1))
    fi
done
for s in "${scenarios[@]}"; do
    read -r verdict _ <"$logs/$s.result" 2>/dev/null || verdict=FAILED
    if [ "$verdict" != passed ]; then
        report_failure "$s"
    fi
done
echo "==> all scenarios took $((SECONDS - start)) s with $jobs side by side"
echo "scenarios: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
