#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: totp_qr
short_description: Render a TOTP enrolment QR code and recovery sheet on the controller
version_added: 0.1.0
description:
  - Renders the C(otpauth://) URI made by M(hardened.mailhost.totp_secret) as QR code
    files (PNG and/or SVG) in a private folder, so the same code can be scanned by several
    devices, and with O(tty=true) shows the code on the operator's terminal.
  - With O(scratch_codes), also writes C(<name>-recovery.txt), a printable sheet with the
    date and the emergency codes with instructions. It names neither the account nor the
    host unless O(sheet_identity=true).
  - Safe for many hosts at once. The folder O(dest) and missing parents are created with
    mode C(0700) without failing when several forks create them together; files are written
    atomically with mode C(0600); each folder records which O(owner) a file belongs to, and
    a file of another owner is refused (the error names both), never overwritten.
  - The secret never enters the result. The terminal copy is written straight to the
    terminal C(ansible-playbook) runs in, so no callback (screen, JSON, JSONL, AWX) records
    it; without a terminal (CI, AWX, cron) only the files are written.
  - The module is idempotent. The wanted bytes are rendered again and compared with the files on disk
    (the output is deterministic), so files that already encode the same URI are left
    alone and damaged ones are rewritten. The recovery sheet keeps its original date.
    Nothing is shown on the terminal when nothing changed.
  - >-
    Meant to run on the controller (C(delegate_to: localhost)); needs the Python library
    C(segno) there.
author:
  - hardened.mailhost developers (!UNKNOWN)
requirements:
  - segno (on the host that runs the module, normally the controller)
extends_documentation_fragment:
  - hardened.mailhost.attributes
attributes:
  check_mode:
    support: full
    details: Reports what would change; writes and shows nothing.
  diff_mode:
    support: none
    details: The files hold secrets; no diff is produced.
  idempotent:
    support: partial
    details: With O(force=true) a change is reported (and the code shown) every run.
options:
  uri:
    description:
      - The C(otpauth://totp/...) URI to encode (RV(hardened.mailhost.totp_secret#module:uri)).
      - Secret; it is never logged.
    type: str
    required: true
  dest:
    description:
      - Folder that receives the files; created with mode C(0700) if missing.
    type: path
    required: true
  owner:
    description:
      - Whose files these are, normally C(inventory_hostname). A file in O(dest) recorded
        for another owner is refused, never overwritten.
    type: str
    required: true
  name:
    description:
      - Base name of the files (C(<name>.png), C(<name>.svg), C(<name>-recovery.txt)).
        Letters, digits, C(.), C(_), C(@) and C(-) only.
    type: str
    required: true
  formats:
    description:
      - Image formats to write.
    type: list
    elements: str
    choices: [png, svg]
    default: [png, svg]
  scratch_codes:
    description:
      - The 8-digit emergency codes (RV(hardened.mailhost.totp_secret#module:scratch_codes)).
        When given and not empty, the recovery sheet C(<name>-recovery.txt) is written.
      - Secret; never logged.
    type: list
    elements: str
  sheet_identity:
    description:
      - Print the issuer (host) and the account label on the recovery sheet. Off by default
        so a lost sheet does not tell where its codes work.
    type: bool
    default: false
  tty:
    description:
      - When the files were written (a new secret) or O(force=true), also show the QR code on
        the terminal that runs C(ansible-playbook), as Unicode half blocks. Written to the
        terminal device directly, never to the task result or any callback. Several hosts'
        codes are shown one after another, never interleaved.
    type: bool
    default: false
  force:
    description:
      - Report a change and show the code on the terminal (O(tty)) even when the files
        already hold the same content.
    type: bool
    default: false
notes:
  - "The O(uri) and O(scratch_codes) are secrets: the task that passes them from a
    registered M(hardened.mailhost.totp_secret) result B(must) set C(no_log: true) and
    loop over user names only, never over the registered results (callbacks record each
    loop item in full)."
  - Delegated to C(localhost), the module runs with the Python that runs Ansible when
    C(localhost) is the implicit one; if C(localhost) is in the inventory, point its
    C(ansible_python_interpreter) at a Python that has C(segno).
seealso:
  - module: hardened.mailhost.totp_secret
"""

EXAMPLES = r"""
- name: Make alice's TOTP secret
  hardened.mailhost.totp_secret:
    user: alice
    scratch_codes: 5
  register: alice_totp
  no_log: true

- name: Render the QR code and recovery sheet on the controller, show it on the terminal
  hardened.mailhost.totp_qr:
    uri: "{{ alice_totp.uri }}"
    scratch_codes: "{{ alice_totp.scratch_codes }}"
    dest: "{{ playbook_dir }}/enrolment/{{ inventory_hostname }}"
    name: alice
    owner: "{{ inventory_hostname }}"
    tty: true
  delegate_to: localhost
  become: false
  when: alice_totp.uri is defined  # not in check mode, not when the secret was kept
  no_log: true
"""

RETURN = r"""
files:
  description: Paths of the files this task manages (written or already up to date).
  returned: always
  type: list
  elements: str
  sample: [/home/op/enrolment/alice.png, /home/op/enrolment/alice.svg]
shown_on_tty:
  description: Whether the QR code reached the operator's terminal (O(tty)).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.hardened.mailhost.plugins.module_utils import _totp_qr


def main():
    module = AnsibleModule(
        argument_spec=dict(
            uri=dict(type="str", required=True, no_log=True),
            dest=dict(type="path", required=True),
            name=dict(type="str", required=True),
            owner=dict(type="str", required=True),
            formats=dict(type="list", elements="str", choices=list(_totp_qr.FORMATS),
                         default=list(_totp_qr.FORMATS)),
            scratch_codes=dict(type="list", elements="str", no_log=True),
            force=dict(type="bool", default=False),
            sheet_identity=dict(type="bool", default=False),
            tty=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if _totp_qr.SEGNO_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("segno"),
                         exception=_totp_qr.SEGNO_IMPORT_ERROR)
    params = module.params
    try:
        result = _totp_qr.ensure(
            params["uri"],
            params["dest"],
            params["name"],
            params["owner"],
            formats=params["formats"],
            scratch_codes=params["scratch_codes"],
            force=params["force"],
            check_mode=module.check_mode,
            sheet_identity=params["sheet_identity"],
            tty=params["tty"],
        )
    except _totp_qr.QrError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg="cannot write the QR code files: %s" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
