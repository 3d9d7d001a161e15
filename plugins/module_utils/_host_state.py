# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a Debian host has installed and running, read in one go.

Plain Python without Ansible imports: the module host_state_info runs the two
commands and hands their output here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# dpkg's abbreviated status is three characters: wanted, current, error.
DPKG_QUERY = ["dpkg-query", "--show", "--showformat=${db:Status-Abbrev} ${Package}\\n"]
# Loaded units only: list-unit-files would read every unit file on disk
# (about half a second), and a unit that is not loaded is not running.
SYSTEMCTL_SHOW_ARGS = ["show", "--property=Id,ActiveState,UnitFileState", "*.service"]


def installed_packages(dpkg_output):
    """Names of the packages dpkg reports as installed ('i' as current state), sorted."""
    names = set()
    for line in dpkg_output.splitlines():
        if len(line) > 4 and line[1] == "i":
            names.add(line[3:].strip())
    return sorted(names)


def services(systemctl_output):
    """(active, enabled) unit names from ``systemctl show`` blocks, each sorted."""
    active, enabled = set(), set()
    for block in systemctl_output.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        unit = props.get("Id")
        if not unit:
            continue
        if props.get("ActiveState") == "active":
            active.add(unit)
        if props.get("UnitFileState") == "enabled":
            enabled.add(unit)
    return sorted(active), sorted(enabled)
