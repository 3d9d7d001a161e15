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
  - With O(codes), the codes of many users are written in one run (one module run per host
    instead of one per user). Every entry is checked first (names, URIs, codes, and files of
    another owner in the way), and one problem fails the task naming the entry, with nothing
    written for anyone.
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
      - Exactly one of O(uri) and O(codes) is required; O(name) goes with O(uri).
    type: str
  codes:
    description:
      - Many codes in one run, each entry with its own O(codes[].uri), O(codes[].name) and
        O(codes[].scratch_codes); O(dest), O(owner), O(formats), O(sheet_identity), O(tty)
        and O(force) apply to all. An empty list changes nothing.
      - Mutually exclusive with O(uri), O(name) and O(scratch_codes).
    type: list
    elements: dict
    version_added: 0.3.0
    suboptions:
      uri:
        description: The C(otpauth://totp/...) URI. Secret; never logged.
        type: str
        required: true
      name:
        description: Base name of this entry's files, as O(name).
        type: str
        required: true
      scratch_codes:
        description: This entry's emergency codes, as O(scratch_codes). Secret; never logged.
        type: list
        elements: str
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
      - Required with O(uri).
    type: str
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

- name: Render every new user's code in one run (names from the registered list form)
  hardened.mailhost.totp_qr:
    codes:
      - uri: "{{ totp.secrets.alice.uri }}"
        name: alice@{{ inventory_hostname }}
        scratch_codes: "{{ totp.secrets.alice.scratch_codes }}"
      - uri: "{{ totp.secrets.bob.uri }}"
        name: bob@{{ inventory_hostname }}
    dest: "{{ playbook_dir }}/enrolment"
    owner: "{{ inventory_hostname }}"
  delegate_to: localhost
  become: false
"""

RETURN = r"""
files:
  description: Paths of the files this task manages (written or already up to date).
  returned: always
  type: list
  elements: str
  sample: [/home/op/enrolment/alice.png, /home/op/enrolment/alice.svg]
shown_on_tty:
  description: Whether the QR code reached the operator's terminal (O(tty)); with O(codes), whether any did.
  returned: always
  type: bool
codes:
  description: With O(codes), one result per entry, in order (no secrets).
  returned: codes given
  type: list
  elements: dict
  contains:
    name:
      description: The entry's O(codes[].name).
      type: str
    changed:
      description: Whether this entry's files were (or in check mode would be) written.
      type: bool
    files:
      description: This entry's files.
      type: list
      elements: str
    shown_on_tty:
      description: Whether this entry's code reached the terminal.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.hardened.mailhost.plugins.module_utils import _totp_qr


def run_many(module, params):
    """All entries checked (check-mode pass, which also finds files of another
    owner), then written; one problem names its entry and nothing is written."""
    entries = params["codes"]
    names = [entry["name"] for entry in entries]
    dupes = sorted(set(name for name in names if names.count(name) > 1))
    if dupes:
        module.fail_json(msg="codes: each name at most once (%s given twice); nothing was written"
                         % ", ".join(dupes))
    common = dict(formats=params["formats"], force=params["force"], sheet_identity=params["sheet_identity"])
    for index, entry in enumerate(entries):
        try:
            _totp_qr.ensure(entry["uri"], params["dest"], entry["name"], params["owner"],
                            scratch_codes=entry["scratch_codes"] or None, check_mode=True, **common)
        except _totp_qr.QrError as exc:
            module.fail_json(msg="codes[%d] (%s): %s; nothing was written for anyone"
                             % (index, entry["name"], exc))
        except (OSError, IOError) as exc:
            module.fail_json(msg="codes[%d] (%s): cannot check the QR code files: %s; nothing was written"
                             % (index, entry["name"], exc))
    results = []
    for index, entry in enumerate(entries):
        try:
            result = _totp_qr.ensure(entry["uri"], params["dest"], entry["name"], params["owner"],
                                     scratch_codes=entry["scratch_codes"] or None,
                                     check_mode=module.check_mode, tty=params["tty"], **common)
        except (_totp_qr.QrError, OSError, IOError) as exc:
            module.fail_json(msg="codes[%d] (%s): cannot write the QR code files: %s (written before it: %s)"
                             % (index, entry["name"], exc, ", ".join(r["name"] for r in results) or "none"),
                             changed=bool(results), codes=results)
        result["name"] = entry["name"]
        results.append(result)
    return {"changed": any(r["changed"] for r in results), "codes": results,
            "files": [path for r in results for path in r["files"]],
            "shown_on_tty": any(r["shown_on_tty"] for r in results)}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            uri=dict(type="str", no_log=True),
            codes=dict(type="list", elements="dict", options=dict(
                uri=dict(type="str", required=True, no_log=True),
                name=dict(type="str", required=True),
                scratch_codes=dict(type="list", elements="str", no_log=True),
            )),
            dest=dict(type="path", required=True),
            name=dict(type="str"),
            owner=dict(type="str", required=True),
            formats=dict(type="list", elements="str", choices=list(_totp_qr.FORMATS),
                         default=list(_totp_qr.FORMATS)),
            scratch_codes=dict(type="list", elements="str", no_log=True),
            force=dict(type="bool", default=False),
            sheet_identity=dict(type="bool", default=False),
            tty=dict(type="bool", default=False),
        ),
        required_one_of=[("uri", "codes")],
        mutually_exclusive=[("uri", "codes"), ("name", "codes"), ("scratch_codes", "codes")],
        required_together=[("uri", "name")],
        supports_check_mode=True,
    )
    if _totp_qr.SEGNO_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("segno"),
                         exception=_totp_qr.SEGNO_IMPORT_ERROR)
    params = module.params
    if params["codes"] is not None:
        module.exit_json(**run_many(module, params))
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
