#!/usr/bin/env bash
# Quality gates, run by scripts/test.sh before the Molecule scenarios:
#   ansible-lint (production profile), ansible-test sanity on the collection,
#   module docs render, role READMEs match their argument_specs, changelog
#   fragments parse, shell scripts parse.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"
cd "$HM_ROOT"

step() { printf '==> %s\n' "$*"; }

step "shell scripts parse"
for s in scripts/*.sh .ci/run; do bash -n "$s"; done

step "role READMEs match meta/argument_specs.yml"
python scripts/role_docs.py --check

step "changelog fragments"
python - <<'PY'
import pathlib, sys, yaml
cfg = yaml.safe_load(open("changelogs/config.yaml"))
sections = {s[0] for s in cfg["sections"]} | {cfg["trivial_section_name"], cfg["prelude_section_name"]}
bad = []
fragments = sorted(pathlib.Path("changelogs/fragments").glob("*.y*ml"))
for f in fragments:
    data = yaml.safe_load(f.read_text())
    if not isinstance(data, dict) or not data or set(data) - sections:
        bad.append(f"{f}: sections must be among {sorted(sections)}")
        continue
    for sec, entries in data.items():
        if sec != cfg["prelude_section_name"] and not (isinstance(entries, list) and all(isinstance(e, str) and e.strip() for e in entries)):
            bad.append(f"{f}: {sec} must be a list of non-empty strings")
if not fragments:
    bad.append("no changelog fragments")
print("\n".join(bad) or f"{len(fragments)} fragments ok")
sys.exit(1 if bad else 0)
PY

step "ansible-doc renders every module and filter"
for m in plugins/modules/*.py; do
    ansible-doc "hardened.mailhost.$(basename "$m" .py)" >/dev/null
done
for f in plugins/filter/*.py; do
    ansible-doc -t filter "hardened.mailhost.$(basename "$f" .py)" >/dev/null
done

step "ansible-lint (production profile)"
ansible-lint --format=pep8 --nocolor -q

step "ansible-test sanity"
# ansible-test needs the collection under ansible_collections/<ns>/<name> as a
# real folder (not through the .collections symlink) and git metadata; copy the
# tracked files into a scratch tree. Its pip bootstrap script comes from a host
# this network does not reach: use the project's stand-in (ensurepip + PyPI).
sanity_root=$(mktemp -d)
trap 'rm -rf "$sanity_root"' EXIT
dest="$sanity_root/ansible_collections/hardened/mailhost"
mkdir -p "$dest"
git ls-files -z --cached --others --exclude-standard | (cd "$HM_ROOT" && xargs -0 cp --parents -t "$dest" 2>/dev/null || true)
mkdir -p "$HOME/.ansible/test/cache"
for v in 24_2 25_1; do
    [ -s "$HOME/.ansible/test/cache/get_pip_$v.py" ] || cp scripts/ansible_test_get_pip.py "$HOME/.ansible/test/cache/get_pip_$v.py"
done
(cd "$dest" && git init -q . && git add -A >/dev/null &&
    ansible-test sanity --color no --python "$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
        --exclude molecule/ --exclude scripts/ --exclude benchmarks/ 2>&1 |
        grep -vE 'Using locale|Reviewing previous|is ignored: it is neither' || exit "${PIPESTATUS[0]}")
