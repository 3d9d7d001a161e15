#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: controller_secret
short_description: Hand a secret to the operator in a private file on the controller
version_added: 0.2.0
description:
  - Writes a secret (a generated PIN, a PKCS#12 password, a QR code image) into a file
    on the B(controller), mode C(0600), in a folder of mode C(0700) made when missing.
  - Safe for many hosts at once (forks > 1, one shared folder) - folders are created
    race-free and files through a temporary file and one rename; each folder keeps a
    C(.owners) ledger, and a file recorded for another O(owner) is never overwritten
    (the error names both owners).
  - The content never enters the task result, so no callback (screen, JSON, JSONL, AWX
    job events) records it. O(tty_message) is written straight to the controller's
    terminal when there is one, bypassing callbacks too.
  - This is an action plugin; it runs on the controller only and contacts no host.
author:
  - hardened.mailhost developers (!UNKNOWN)
extends_documentation_fragment:
  - hardened.mailhost.attributes
attributes:
  check_mode:
    support: full
    details: Reports whether the file would change; writes nothing, shows nothing.
  diff_mode:
    support: none
    details: The file holds a secret; no diff is produced.
  idempotent:
    support: full
    details: The same owner writing the same bytes changes nothing.
options:
  path:
    description:
      - The file on the controller. Let its name carry what makes it unique (host, user,
        device).
    type: path
    required: true
  content:
    description:
      - The secret as text. Never logged. Mutually exclusive with O(content_b64).
    type: str
  content_b64:
    description:
      - The secret as base64 (for binary files such as a PNG). Never logged.
    type: str
  owner:
    description:
      - Who the file belongs to, normally C(inventory_hostname). A file recorded for
        another owner is refused, never replaced.
    type: str
    required: true
  mode:
    description:
      - File mode, C(0600) or C(0400).
    type: raw
    default: "0600"
  state:
    description:
      - V(absent) removes the file (only when it is O(owner)'s or unrecorded).
    type: str
    choices: [present, absent]
    default: present
  tty_message:
    description:
      - Text written to the controller's C(/dev/tty) after the file was written (a new
        secret). Not logged and not part of the result; nothing is shown when there is no
        terminal (CI, AWX, cron).
    type: str
notes:
  - "Do not set C(no_log: true) on the task: the result never holds the content, and
    callbacks do not record a task's arguments, so C(no_log) would only hide a refusal
    (such as a file that belongs to another host). What the task B(must) avoid is a
    loop whose items carry the secret (callbacks record each item in full): loop over
    user names and read the secret from the registered result by index, as in the
    example."
seealso:
  - module: hardened.mailhost.totp_qr
"""

EXAMPLES = r"""
- name: Generate PINs (the results hold them)
  hardened.mailhost.userdb_pin:
    db: /etc/security/sudo_pin
    user: "{{ item }}"
    generate: true
  loop: [alice, bob]
  register: stored
  no_log: true

- name: Hand each generated PIN to the operator (the loop items are names only)
  hardened.mailhost.controller_secret:
    path: "~/.hardened-mailhost/sudo_pin/{{ inventory_hostname }}/{{ item }}.pin"
    content: "{{ stored.results[idx].pin }}"
    owner: "{{ inventory_hostname }}"
    tty_message: "New sudo PIN for {{ item }} on {{ inventory_hostname }}: {{ stored.results[idx].pin }}"
  loop: "{{ stored.results | map(attribute='item') | list }}"
  loop_control:
    index_var: idx
  when: stored.results[idx].pin is defined
"""

RETURN = r"""
path:
  description: The file written (or that would be written in check mode).
  returned: always
  type: str
shown_on_tty:
  description: Whether O(tty_message) reached a terminal.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hardened.mailhost.plugins.module_utils._controller_files import SECRET_ARGUMENT_SPEC


def main():
    module = AnsibleModule(argument_spec=SECRET_ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(msg="controller_secret runs as an action plugin on the controller; "
                         "this module body is never meant to run on a host")


if __name__ == "__main__":
    main()
