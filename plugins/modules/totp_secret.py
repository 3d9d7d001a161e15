#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: totp_secret
short_description: Manage a user's TOTP secret for pam_google_authenticator
version_added: 0.1.0
description:
  - Creates, keeps, rotates or removes C(~user/.google_authenticator), the file that
    C(pam_google_authenticator) reads for time-based one-time passwords (RFC 6238,
    SHA-1, 6 digits, 30 second steps).
  - Takes one user (O(user)) or a whole list (O(users)) in one run. With a list, every
    user is looked up and every existing file checked before anything is written; one
    problem fails the task naming each user concerned, and nothing is changed for anyone.
    If a write fails part way, the files already written in this run are put back.
  - The file is written in the format the PAM module reads. Line 1 is a 160-bit secret
    in base32 (32 characters), then the option lines C(" RATE_LIMIT 2 30),
    C(" WINDOW_SIZE 3), C(" DISALLOW_REUSE) and C(" TOTP_AUTH) (each starts with a
    double quote and a space), then the optional 8-digit scratch codes, one per line.
  - The file is owned by the user and the user's primary group, mode C(0400), and is
    replaced atomically through a temporary file in the same folder.
  - An existing valid secret is kept unless O(rotate=true). The PAM module rewrites the
    file at every login (attempt timestamps after C(RATE_LIMIT), used time steps after
    C(DISALLOW_REUSE), C(TIME_SKEW) lines, consumed scratch codes removed); this runtime
    state is not a difference. When a configured option differs, the file is rewritten
    with the same secret, and the runtime state is kept, so a code that has just been
    used stays unusable and the attempt throttle keeps counting.
  - Fewer scratch codes than O(scratch_codes) is not a difference (used codes are consumed;
    use O(rotate=true) for a fresh set, which also makes a new secret). More scratch codes
    than O(scratch_codes) are trimmed to that number, so O(scratch_codes=0) removes them.
  - A file that cannot be kept (first line not base32, unknown lines, a counter-based
    HOTP file, not owned by the user, not a regular file) is an error and nothing is
    changed, unless O(rotate=true), which replaces it.
  - If the file changes while the module updates it (a login in progress), the update is
    redone from the new content, so a consumed code is never brought back.
author:
  - hardened.mailhost developers (!UNKNOWN)
extends_documentation_fragment:
  - hardened.mailhost.attributes
attributes:
  check_mode:
    support: full
    details: Reports what would change; no secret is generated or returned in check mode.
  diff_mode:
    support: full
    details:
      - The diff shows the configured option lines only. The secret and every scratch code
        are replaced by placeholders; the runtime state is left out.
  idempotent:
    support: partial
    details: With O(rotate=true) every run makes a new secret and reports a change.
options:
  user:
    description:
      - Name of the user whose secret is managed. The user must exist, and unless O(path)
        is given, the user's home directory must exist.
      - Exactly one of O(user) and O(users) is required.
    type: str
  users:
    description:
      - Names of the users whose secrets are managed, all in one run with the same
        options (O(state), O(rotate), the file settings). Each user must exist and have a
        home directory; the file is always C(~/.google_authenticator) and the label
        C(<user>@<short host name>).
      - An empty list changes nothing.
      - Mutually exclusive with O(user), O(path) and O(label).
    type: list
    elements: str
    version_added: 0.3.0
  state:
    description:
      - V(present) makes sure a valid secret file exists, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  rotate:
    description:
      - Make a new secret (and new scratch codes) even if a valid one exists. Every
        authenticator app enrolled with the old secret stops working.
      - Also replaces a file that is malformed or has the wrong owner.
    type: bool
    default: false
  issuer:
    description:
      - Issuer shown by authenticator apps, used in the otpauth URI. Must not contain C(:).
      - Defaults to the host's fully qualified domain name.
    type: str
  label:
    description:
      - Account label in the otpauth URI. Must not contain C(:).
      - Defaults to C(<user>@<short host name>).
    type: str
  rate_limit_logins:
    description:
      - Number of login attempts allowed per O(rate_limit_seconds). V(0) leaves out the
        C(RATE_LIMIT) line (no rate limiting by the PAM module).
      - Allowed range 0 to 10 (the PAM module itself accepts up to 100).
    type: int
    default: 2
  rate_limit_seconds:
    description:
      - Length of the rate limiting interval in seconds, 15 to 600.
    type: int
    default: 30
  window_size:
    description:
      - Number of 30 second time steps whose codes are accepted, 1 to 21 (the
        C(google-authenticator) tool's range; the PAM module accepts up to 100).
      - The PAM module checks the steps from C(-(window_size-1)/2) to C(window_size/2)
        around now, so an odd value gives a symmetric window (3 is one step either side);
        an even value accepts one more step in the future than in the past.
    type: int
    default: 3
  disallow_reuse:
    description:
      - Write C(DISALLOW_REUSE) so each code logs in at most once.
    type: bool
    default: true
  scratch_codes:
    description:
      - Number of 8-digit single-use emergency codes to generate with a new secret, 0 to 10.
      - Each one logs in without the app; the PAM module deletes it when it is used.
    type: int
    default: 0
  path:
    description:
      - Location of the secret file. Defaults to C(.google_authenticator) in the user's
        home directory. Its folder must exist. Mainly for tests and for PAM set-ups
        that use C(secret=).
    type: path
notes:
  - >-
    The return values RV(secret), RV(uri) and RV(scratch_codes) are secrets. A module
    cannot mask its own return values, so the task that calls this module B(must) set
    C(no_log: true); hand them to the QR code task (M(hardened.mailhost.totp_qr)) in a
    variable, never print them.
  - Runs as root on the managed host; needs only the Python standard library.
seealso:
  - module: hardened.mailhost.totp_qr
"""

EXAMPLES = r"""
- name: Enrol alice for TOTP (the result holds the secret, hence no_log)
  hardened.mailhost.totp_secret:
    user: alice
    scratch_codes: 5
  register: alice_totp
  no_log: true

- name: Render the QR code on the controller when a secret was made
  hardened.mailhost.totp_qr:
    uri: "{{ alice_totp.uri }}"
    scratch_codes: "{{ alice_totp.scratch_codes }}"
    dest: "{{ playbook_dir }}/enrolment"
    name: alice
  delegate_to: localhost
  when: alice_totp.uri is defined  # not in check mode, not when the secret was kept
  no_log: true

- name: Allow three attempts per minute and a wider clock window for bob
  hardened.mailhost.totp_secret:
    user: bob
    rate_limit_logins: 3
    rate_limit_seconds: 60
    window_size: 5
  no_log: true

- name: Replace a lost phone's secret
  hardened.mailhost.totp_secret:
    user: carol
    rotate: true
  register: carol_totp
  no_log: true

- name: Remove dave's secret
  hardened.mailhost.totp_secret:
    user: dave
    state: absent

- name: Enrol every SSH user in one run (the result holds the new secrets, hence no_log)
  hardened.mailhost.totp_secret:
    users: [alice, bob, carol]
  register: enrolment
  no_log: true

- name: Render a QR code for each new secret (the loop items are names, never secrets)
  hardened.mailhost.totp_qr:
    uri: "{{ enrolment.secrets[item].uri }}"
    dest: "{{ playbook_dir }}/enrolment"
    name: "{{ item }}@{{ inventory_hostname }}"
    owner: "{{ inventory_hostname }}"
  loop: "{{ enrolment.secrets | list }}"
  delegate_to: localhost
"""

RETURN = r"""
path:
  description: Location of the secret file.
  returned: with O(user)
  type: str
  sample: /home/alice/.google_authenticator
created:
  description: Whether a new secret was made in this run (first enrolment or rotation).
  returned: with O(user)
  type: bool
  sample: true
rotated:
  description: Whether an existing file was replaced by a new secret (O(rotate=true)).
  returned: with O(user)
  type: bool
  sample: false
reasons:
  description: Why the file was (or in check mode would be) written.
  returned: with O(user), changed and state is present
  type: list
  elements: str
  sample: [window size]
users:
  description:
    - One entry per user of O(users), in the same order. Holds no secret, so it may be
      looped over and shown.
  returned: with O(users)
  type: list
  elements: dict
  contains:
    name:
      description: The user.
      type: str
      sample: alice
    path:
      description: Location of the user's secret file.
      type: str
      sample: /home/alice/.google_authenticator
    state:
      description: The state asked for.
      type: str
      sample: present
    changed:
      description: Whether this user's file was (or in check mode would be) written or removed.
      type: bool
      sample: true
    created:
      description: Whether a new secret was (or would be) made for this user.
      type: bool
      sample: true
    rotated:
      description: Whether an existing file was (or would be) replaced by a new secret.
      type: bool
      sample: false
    reasons:
      description: Why the file was (or would be) written; only for a change with O(state=present).
      type: list
      elements: str
      sample: [new secret]
secrets:
  description:
    - The new secrets by user name, each with C(secret), C(uri) and C(scratch_codes) as
      described for the single-user form. Empty in check mode and when no secret was made.
    - "Secret; the calling task must use C(no_log: true). Loop over its keys (user
      names), never over its values."
  returned: with O(users)
  type: dict
  sample: {alice: {secret: JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP, uri: "otpauth://totp/...", scratch_codes: []}}
secret:
  description:
    - The base32 secret, for manual entry in an authenticator app.
    - "Secret; the calling task must use C(no_log: true)."
  returned: with O(user), when a new secret was written (RV(created)), never in check mode
  type: str
  sample: JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP
uri:
  description:
    - The C(otpauth://totp/...) key URI for a QR code, with issuer, label, SHA1, 6 digits,
      30 seconds.
    - "Secret; the calling task must use C(no_log: true)."
  returned: with O(user), when a new secret was written (RV(created)), never in check mode
  type: str
  sample: otpauth://totp/mail.example.org:alice%40mail?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=mail.example.org&algorithm=SHA1&digits=6&period=30
scratch_codes:
  description:
    - The new 8-digit emergency codes (empty list when O(scratch_codes=0)).
    - "Secret; the calling task must use C(no_log: true)."
  returned: with O(user), when a new secret was written (RV(created)), never in check mode
  type: list
  elements: str
  sample: ["48213377", "90417736"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hardened.mailhost.plugins.module_utils import _totp


def main():
    module = AnsibleModule(
        argument_spec=dict(
            user=dict(type="str"),
            users=dict(type="list", elements="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            rotate=dict(type="bool", default=False),
            issuer=dict(type="str"),
            label=dict(type="str"),
            rate_limit_logins=dict(type="int", default=2),
            rate_limit_seconds=dict(type="int", default=30),
            window_size=dict(type="int", default=3),
            disallow_reuse=dict(type="bool", default=True),
            scratch_codes=dict(type="int", default=0),
            path=dict(type="path"),
        ),
        mutually_exclusive=[["user", "users"], ["users", "path"], ["users", "label"]],
        required_one_of=[["user", "users"]],
        supports_check_mode=True,
    )
    params = module.params
    settings = _totp.Settings(
        rate_limit_logins=params["rate_limit_logins"],
        rate_limit_seconds=params["rate_limit_seconds"],
        window_size=params["window_size"],
        disallow_reuse=params["disallow_reuse"],
        scratch_codes=params["scratch_codes"],
    )
    try:
        if params["users"] is not None:
            result = _totp.ensure_many(
                params["users"],
                state=params["state"],
                settings=settings,
                rotate=params["rotate"],
                issuer=params["issuer"],
                check_mode=module.check_mode,
            )
        else:
            result = _totp.ensure(
                params["user"],
                state=params["state"],
                path=params["path"],
                settings=settings,
                rotate=params["rotate"],
                issuer=params["issuer"],
                label=params["label"],
                check_mode=module.check_mode,
            )
    except _totp.TotpError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg="cannot write the TOTP secret file: %s" % exc)
    diff = result.pop("diff")
    if module._diff:
        header = result.get("path", "~/.google_authenticator of each user")
        result["diff"] = dict(before=diff["before"], after=diff["after"],
                              before_header=header, after_header=header)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
