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
    devices, and returns the code as terminal text.
  - With O(scratch_codes), also writes C(<name>-recovery.txt), a printable sheet with the
    issuer, the account label, the date and the emergency codes with instructions.
  - The folder O(dest) is created with mode C(0700) when missing and its mode is set to
    C(0700) when it differs. Files are written atomically with mode C(0600).
  - The module is idempotent. The wanted bytes are rendered again and compared with the files on disk
    (the output is deterministic), so files that already encode the same URI are left
    alone and damaged ones are rewritten. The recovery sheet keeps its original date.
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
    details: Reports what would change; writes nothing and returns no RV(terminal).
  diff_mode:
    support: none
    details: The files hold secrets; no diff is produced.
  idempotent:
    support: partial
    details: With O(force=true) the files are rewritten and a change is reported every run.
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
  force:
    description:
      - Rewrite the files even when they already hold the same content, and return
        RV(terminal) again.
    type: bool
    default: false
notes:
  - "RV(terminal) shows the secret as a QR code: the task that calls this module B(must)
    set C(no_log: true), and a separate M(ansible.builtin.debug) task prints the lines
    when the operator wants to scan from the terminal (that output is secret too; keep
    it off logs and CI)."
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

- name: Render the QR code and recovery sheet on the controller
  hardened.mailhost.totp_qr:
    uri: "{{ alice_totp.uri }}"
    scratch_codes: "{{ alice_totp.scratch_codes }}"
    dest: "{{ playbook_dir }}/enrolment/{{ inventory_hostname }}"
    name: alice
  delegate_to: localhost
  when: alice_totp.uri is defined  # not in check mode, not when the secret was kept
  register: alice_qr
  no_log: true

- name: Show the QR code for scanning from the terminal
  ansible.builtin.debug:
    msg: "{{ alice_qr.terminal }}"
  when: alice_qr.terminal is defined
"""

RETURN = r"""
files:
  description: Paths of the files this task manages (written or already up to date).
  returned: always
  type: list
  elements: str
  sample: [/home/op/enrolment/alice.png, /home/op/enrolment/alice.svg]
terminal:
  description:
    - The QR code as text for a terminal, one string per line, two modules per character
      (Unicode half blocks, light modules drawn, for dark backgrounds).
    - "Secret: the calling task must use C(no_log: true)."
  returned: when something changed (always with O(force=true)), not in check mode
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.hardened.mailhost.plugins.module_utils import _totp_qr


def main():
    module = AnsibleModule(
        argument_spec=dict(
            uri=dict(type="str", required=True, no_log=True),
            dest=dict(type="path", required=True),
            name=dict(type="str", required=True),
            formats=dict(type="list", elements="str", choices=list(_totp_qr.FORMATS),
                         default=list(_totp_qr.FORMATS)),
            scratch_codes=dict(type="list", elements="str", no_log=True),
            force=dict(type="bool", default=False),
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
            formats=params["formats"],
            scratch_codes=params["scratch_codes"],
            force=params["force"],
            check_mode=module.check_mode,
        )
    except _totp_qr.QrError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg="cannot write the QR code files: %s" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
