#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) to run the playbooks and tests:
# Debian packages, the Python venv, the collections taken from PyPI's `ansible`
# wheel (Galaxy is not reachable), the collection symlink and the base images.
# Every step is skipped when already done, so rerunning costs seconds.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"
cd "$HM_ROOT"

log() { printf '==> %s\n' "$*"; }

apt_packages=(podman runc debootstrap zstd python3-venv uidmap slirp4netns
    fuse-overlayfs db-util openssl git make
    libpam-google-authenticator pamtester zbar-tools chromium chromium-driver
    nsd)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# nsd is only a test tool (the DNS check's tests start their own on a high
# port): on a machine with systemd its packaged service stays off.
if [ -d /run/systemd/system ] && systemctl is-enabled --quiet nsd 2>/dev/null; then
    systemctl disable --now nsd >/dev/null 2>&1 || true
fi

# Debian's own python3: its dbm.ndbm uses the same Berkeley DB as pam_userdb.
req_hash=$(sha256sum requirements.txt | cut -c1-16)
if [ ! -x "$HM_VENV/bin/python" ] || [ "$(cat "$HM_VENV/.requirements" 2>/dev/null)" != "$req_hash" ]; then
    log "python venv in $HM_VENV"
    /usr/bin/python3 -m venv "$HM_VENV"
    "$HM_VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt 2>&1 |
        grep -v 'is ignored: it is neither' || true
    "$HM_VENV/bin/python" -c 'import ansible, molecule, pyotp, segno, cryptography, paramiko'
    echo "$req_hash" >"$HM_VENV/.requirements"
fi

# sslyze (the postfix scenario's TLS scan) in a venv of its own: every sslyze
# release caps cryptography below the version requirements.txt pins.
sslyze_venv=$HM_CACHE_DIR/sslyze-venv
sslyze_hash=$(sha256sum requirements-sslyze.txt | cut -c1-16)
if [ ! -x "$sslyze_venv/bin/sslyze" ] || [ "$(cat "$sslyze_venv/.requirements" 2>/dev/null)" != "$sslyze_hash" ]; then
    log "sslyze venv in $sslyze_venv"
    /usr/bin/python3 -m venv "$sslyze_venv"
    "$sslyze_venv/bin/pip" install -q --disable-pip-version-check -r requirements-sslyze.txt 2>&1 |
        grep -v 'is ignored: it is neither' || true
    "$sslyze_venv/bin/sslyze" --help >/dev/null
    echo "$sslyze_hash" >"$sslyze_venv/.requirements"
fi

# Collections the tests and playbooks use, from the `ansible` community
# package on PyPI, unpacked once into the cache and linked into .collections.
ansible_version=$(sed -n 's/^# ansible-community-package==\([0-9.]*\).*/\1/p' requirements.txt)
ansible_version=${ansible_version:-12.3.0}
wanted_collections=(containers/podman community/crypto community/general ansible/posix)
coll_cache="$HM_CACHE_DIR/collections-$ansible_version"
if [ ! -f "$coll_cache/.complete" ]; then
    log "collections from ansible==$ansible_version"
    mkdir -p "$HM_CACHE_DIR/wheels"
    wheel=$(ls "$HM_CACHE_DIR"/wheels/ansible-"$ansible_version"-py3-none-any.whl 2>/dev/null || true)
    if [ -z "$wheel" ]; then
        "$HM_VENV/bin/pip" download -q --disable-pip-version-check --no-deps \
            -d "$HM_CACHE_DIR/wheels" "ansible==$ansible_version" 2>&1 | grep -v 'is ignored' || true
        wheel="$HM_CACHE_DIR/wheels/ansible-$ansible_version-py3-none-any.whl"
    fi
    rm -rf "$coll_cache.tmp" && mkdir -p "$coll_cache.tmp"
    "$HM_VENV/bin/python" - "$wheel" "$coll_cache.tmp" "${wanted_collections[@]}" <<'PY'
import sys, zipfile
wheel, dest, *wanted = sys.argv[1:]
prefixes = tuple(f"ansible_collections/{c}/" for c in wanted)
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith(prefixes)]
    zf.extractall(dest, members)
PY
    rm -rf "$coll_cache" && mv "$coll_cache.tmp" "$coll_cache" && touch "$coll_cache/.complete"
fi
mkdir -p .collections/ansible_collections/hardened
for c in "${wanted_collections[@]}"; do
    ns=${c%/*}
    mkdir -p ".collections/ansible_collections/$ns"
    ln -sfn "$coll_cache/ansible_collections/$c" ".collections/ansible_collections/$c"
done
ln -sfn "$HM_ROOT" .collections/ansible_collections/hardened/mailhost

for scenario_dir in molecule/*/ demo/; do
    s=$(basename "$scenario_dir")
    [ "$s" = common ] && continue
    for p in debian12 debian13; do
        mkdir -p "$HM_CACHE_DIR/apt/$s/$p/archives/partial" "$HM_CACHE_DIR/apt/$s/$p/lists/partial"
    done
done
"$here/build-images.sh"
log "ready: . scripts/env.sh puts the venv and collections on your path"
