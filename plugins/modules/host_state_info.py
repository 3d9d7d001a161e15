#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: host_state_info
short_description: List the installed packages and the active and enabled services of a Debian host
version_added: 0.1.0
description:
  - Reads, in one module run, which packages dpkg has installed and which systemd
    services are active and enabled, so that a role can skip M(ansible.builtin.apt)
    and M(ansible.builtin.systemd_service) when nothing is missing.
  - The roles of this collection run it once per run and keep the result as plain host
    variables (never in a fact cache); see docs/architecture.md.
  - Only loaded services are listed; a service that is not loaded is not active.
author:
  - hardened.mailhost developers (@hardened-mailhost)
extends_documentation_fragment:
  - hardened.mailhost.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options: {}
requirements:
  - dpkg-query (Debian and derivatives)
notes:
  - Without systemd (no C(systemctl)) the service lists are empty and RV(systemd) is V(false).
"""

EXAMPLES = r"""
- name: Read what the host has
  hardened.mailhost.host_state_info:
  register: host_state

- name: Install Postfix only when it is missing
  ansible.builtin.apt:
    name: postfix
  when: "'postfix' not in host_state.packages"
"""

RETURN = r"""
packages:
  description: Names of the installed packages (without architecture), sorted.
  returned: always
  type: list
  elements: str
  sample: [openssh-server, postfix]
active_services:
  description: Loaded services that are active (running, or exited with RemainAfterExit).
  returned: always
  type: list
  elements: str
  sample: [postfix.service, ssh.service]
enabled_services:
  description: Loaded services whose unit file state is C(enabled).
  returned: always
  type: list
  elements: str
  sample: [postfix.service, ssh.service]
systemd:
  description: Whether C(systemctl) answered.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hardened.mailhost.plugins.module_utils import _host_state


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    rc, out, err = module.run_command(_host_state.DPKG_QUERY, environ_update={"LC_ALL": "C"})
    if rc != 0:
        module.fail_json(msg="dpkg-query failed (rc %d): %s" % (rc, err.strip()))
    result = dict(changed=False, packages=_host_state.installed_packages(out),
                  active_services=[], enabled_services=[], systemd=False)
    systemctl = module.get_bin_path("systemctl")
    if systemctl:
        rc, out, err = module.run_command([systemctl] + _host_state.SYSTEMCTL_SHOW_ARGS)
        if rc == 0:
            result["active_services"], result["enabled_services"] = _host_state.services(out)
            result["systemd"] = True
        else:
            module.warn("systemctl show failed (rc %d): %s" % (rc, err.strip()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
