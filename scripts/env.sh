# Sourced by the project's scripts and the Makefile: one place for paths.
# shellcheck shell=bash
HM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HM_ROOT
export HM_CACHE_DIR=${HM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hardened-mailhost}
export HM_IMAGE_REPO=${HM_IMAGE_REPO:-localhost/hardened-mailhost-base}
export HM_VENV=${HM_VENV:-$HM_ROOT/.venv}
export CONTAINERS_CONF=$HM_ROOT/molecule/common/containers.conf
# The collection is found through a symlink farm so that the checkout can be
# named anything: .collections/ansible_collections/hardened/mailhost -> repo.
export ANSIBLE_COLLECTIONS_PATH=$HM_ROOT/.collections
export ANSIBLE_ROLES_PATH=$HM_ROOT/roles
export ANSIBLE_CONFIG=$HM_ROOT/ansible.cfg
case ":$PATH:" in *":$HM_VENV/bin:"*) ;; *) export PATH=$HM_VENV/bin:$PATH ;; esac
export MOLECULE_GLOB="molecule/*/molecule.yml"
