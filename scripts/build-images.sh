#!/usr/bin/env bash
# Build the systemd-booting Debian base images the Molecule scenarios run on.
#
# No registry can be pulled from here, so each image is a debootstrap rootfs
# imported into podman. Two caches make reruns cheap:
#   - the image itself in podman's store (tagged with a hash of this script,
#     so editing the package list forces a rebuild);
#   - a compressed rootfs tarball under $HM_CACHE_DIR/rootfs, which survives
#     `podman system reset` and fresh clones.
# Usage: scripts/build-images.sh [bookworm|trixie ...]   (default: both)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

mirror=${HM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-apt,systemd,systemd-sysv,dbus,sudo,iproute2,ca-certificates,procps
recipe_hash=$(printf '%s\n' "$packages" "$(cat "$0")" | sha256sum | cut -c1-12)
rootfs_cache="$HM_CACHE_DIR/rootfs"
mkdir -p "$rootfs_cache"

build_one() {
    local suite=$1 tag=$2
    local image="$HM_IMAGE_REPO:$tag"
    local tarball="$rootfs_cache/$suite-$recipe_hash.tar.zst"

    if podman image exists "$image" &&
        [ "$(podman image inspect --format '{{index .Labels "hm.recipe"}}' "$image" 2>/dev/null)" = "$recipe_hash" ]; then
        echo "image $image is current ($recipe_hash)"
        return
    fi
    if [ ! -s "$tarball" ]; then
        local root
        root=$(mktemp -d "$rootfs_cache/.build-$suite.XXXXXX")
        echo "debootstrap $suite into $root"
        debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 ||
            { tail -n 30 "$root.log"; rm -rf "$root" "$root.log"; exit 1; }
        # Containers have no console to log in on and no hardware to manage.
        chroot "$root" systemctl mask getty@tty1.service serial-getty@console.service \
            systemd-udevd.service systemd-modules-load.service >/dev/null 2>&1 || true
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
        tar -C "$root" --numeric-owner -c . | zstd -q -T0 -3 -o "$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root" "$root.log"
        find "$rootfs_cache" -name "$suite-*.tar.zst" ! -name "$(basename "$tarball")" -delete
    fi
    echo "import $tarball as $image"
    # podman 4.3 cannot import a compressed stream: feed it plain tar.
    zstd -q -d -c "$tarball" | podman import \
        --change 'CMD ["/lib/systemd/systemd"]' \
        --change 'STOPSIGNAL SIGRTMIN+3' \
        --change "LABEL hm.recipe=$recipe_hash" \
        - "$image" >/dev/null
}

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)
for suite in "${suites[@]}"; do
    case $suite in
        bookworm) build_one bookworm debian12 ;;
        trixie) build_one trixie debian13 ;;
        *) echo "unknown suite: $suite (bookworm or trixie)" >&2; exit 2 ;;
    esac
done
