#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: app_password_info
short_description: List the devices that have a mail app password
version_added: 0.1.0
description:
  - Reads Dovecot's app password file (written by M(hardened.mailhost.app_password)) and
    returns one entry per device. Never returns a password or a hash.
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
options:
  user:
    description: Only this Linux account's devices.
    type: str
  device:
    description: Only devices with this label.
    type: str
  passwd_file:
    description: The passwd-file to read. A missing file has no entries.
    type: path
    default: /etc/dovecot/app-passwords
seealso:
  - module: hardened.mailhost.app_password
"""

EXAMPLES = r"""
- name: List alice's devices
  hardened.mailhost.app_password_info:
    user: alice
  register: alice_devices

- name: Show their login names
  ansible.builtin.debug:
    msg: "{{ alice_devices.entries | map(attribute='login') | list }}"
"""

RETURN = r"""
entries:
  description: One entry per device, sorted by user and device.
  returned: always
  type: list
  elements: dict
  contains:
    user:
      description: Linux account.
      type: str
      sample: alice
    device:
      description: Device label.
      type: str
      sample: phone
    login:
      description: Login name of the device.
      type: str
      sample: alice+phone
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hardened.mailhost.plugins.module_utils import _app_password


def main():
    module = AnsibleModule(
        argument_spec=dict(
            user=dict(type="str"),
            device=dict(type="str"),
            passwd_file=dict(type="path", default=_app_password.DEFAULT_PATH, no_log=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["user"] is not None:
            _app_password.validate_user(params["user"], must_exist=False)
        if params["device"] is not None:
            _app_password.validate_device(params["device"])
        store = _app_password.AppPasswordFile(params["passwd_file"])
        entries = sorted(store.list(params["user"], params["device"]), key=lambda e: (e["user"], e["device"]))
    except _app_password.AppPasswordError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg="cannot read %s: %s" % (params["passwd_file"], exc))
    module.exit_json(changed=False, entries=entries)


if __name__ == "__main__":
    main()
