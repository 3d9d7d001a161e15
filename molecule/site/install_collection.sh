#!/usr/bin/env bash
# Molecule's dependency step for the site scenario: build the collection the
# way it is published (ansible-galaxy collection build) and install the
# tarball into an empty collections path, which the scenario's converge and
# tests then use instead of the checkout. The collections this one needs to
# run (containers.podman, community.crypto, ...) are linked in next to it,
# but never hardened.mailhost itself.
#   install_collection.sh DEST
set -euo pipefail

dest=${1:?usage: install_collection.sh DEST}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

# The apt caches the scenario's containers mount (the shared config's step).
for p in debian12 debian13 debian13b; do
    mkdir -p "$HM_CACHE_DIR/apt/site/$p/archives/partial" "$HM_CACHE_DIR/apt/site/$p/lists/partial"
done

rm -rf "$dest"
mkdir -p "$dest/build" "$dest/collections"
ansible-galaxy collection build "$root" --output-path "$dest/build" >/dev/null
tarball=$(ls "$dest"/build/hardened-mailhost-*.tar.gz)
# Installed as a user would, with only the new (empty) path configured: the
# checkout's .collections must not count as "already installed". No Galaxy
# server is asked (--offline --no-deps): the dependencies galaxy.yml declares
# (community.crypto, ...) are the ones linked in below.
ANSIBLE_COLLECTIONS_PATH="$dest/collections" \
    ansible-galaxy collection install --offline --no-deps -p "$dest/collections" "$tarball" >/dev/null

for ns in "$root"/.collections/ansible_collections/*; do
    [ "$(basename "$ns")" = hardened ] && continue
    ln -s "$ns" "$dest/collections/ansible_collections/$(basename "$ns")"
done
echo "installed $(basename "$tarball") into $dest/collections"
