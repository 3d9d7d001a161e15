#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: app_password
short_description: Manage per-device mail app passwords in Dovecot's passwd-file
version_added: 0.1.0
description:
  - Creates and removes app passwords, one per user and device, for mail clients
    that cannot present a client certificate (SMTP submission through Dovecot SASL, and
    IMAP when the C(hardened.mailhost.dovecot) role allows it).
  - Takes one device (O(user) and O(device)) or a whole list (O(devices)) in one run; the
    file is locked, read and written once for the list. Every entry is checked first; one
    bad entry fails the task naming it, and nothing is changed for any device.
  - A new password is random (20 characters from a 31-letter alphabet in groups of five,
    about 99 bits), returned B(once) in RV(password), and only its SHA-512 crypt hash
    (C({SHA512-CRYPT}$6$...), made with the system's libxcrypt) is stored.
  - The mail client logs in as C(<user>+<device>) (RV(login)); Dovecot then continues as
    the Linux account O(user) (the C(user=) extra field of the entry), so the device reads
    the user's mailbox. With the C(hardened.mailhost.dovecot) role Postfix sees
    C(<user>+<device>) as the SASL user name, so that quotas and suspension apply to one
    device; a device login may send as its user's addresses.
  - With the C(hardened.mailhost.dovecot) role the client may also log in as
    C(<user>+<device>@<domain>) when C(<domain>) is one of the mail domains the host serves
    (C(dovecot_mail_domains)); with any other domain the login is refused.
  - An existing password is kept unless O(regenerate=true), so the module is idempotent.
  - The file is replaced atomically under a lock, owner C(root), group O(group), mode
    C(0640). A line the module does not understand is an error and nothing is changed.
author:
  - hardened.mailhost developers (@hardened-mailhost)
extends_documentation_fragment:
  - hardened.mailhost.attributes
attributes:
  check_mode:
    support: full
    details: Reports what would change; no password is generated or returned in check mode.
  diff_mode:
    support: full
    details: The diff lists login names only, never a password or a hash.
  idempotent:
    support: partial
    details: With O(regenerate=true) every run makes a new password and reports a change.
options:
  user:
    description:
      - Linux account the app password belongs to. Must exist for O(state=present).
      - Required with O(device); O(user) and O(device), or O(devices), must be given.
    type: str
  device:
    description:
      - Device label, 1-32 lower-case letters, digits, C(_), C(-) or C(.), starting with a
        letter or digit, for example V(phone) or V(laptop-2024). Part of the login name.
    type: str
  devices:
    description:
      - Many devices in one run, each with its own O(devices[].state) and
        O(devices[].regenerate). An empty list changes nothing.
      - Mutually exclusive with O(user), O(device), O(state) and O(regenerate).
    type: list
    elements: dict
    version_added: 0.3.0
    suboptions:
      user:
        description: Linux account (must exist for V(present)).
        type: str
        required: true
      device:
        description: Device label, as O(device).
        type: str
        required: true
      state:
        description: V(present) or V(absent), as O(state).
        type: str
        choices: [present, absent]
        default: present
      regenerate:
        description: Replace an existing password, as O(regenerate).
        type: bool
        default: false
  state:
    description:
      - V(present) makes sure the device has a password, V(absent) removes it.
      - To list the devices without changing anything, use M(hardened.mailhost.app_password_info).
    type: str
    choices: [present, absent]
    default: present
  regenerate:
    description:
      - Replace an existing password with a new one. The device must be given the new one.
    type: bool
    default: false
  passwd_file:
    description:
      - Location of the passwd-file that Dovecot's app password passdb reads.
      - Its folder must exist.
    type: path
    default: /etc/dovecot/app-passwords
  group:
    description:
      - Group that may read the file (Dovecot's auth process).
    type: str
    default: dovecot
notes:
  - >-
    RV(password) is a secret. A module cannot mask its own return values, so the task
    that calls this module B(must) set C(no_log: true) and hand the password to the user
    through a safe channel.
  - Runs as root on the managed host; needs only the Python standard library and libcrypt.
seealso:
  - module: hardened.mailhost.app_password_info
  - module: hardened.mailhost.client_cert
"""

EXAMPLES = r"""
- name: Give alice's phone an app password (shown once, hence no_log)
  hardened.mailhost.app_password:
    user: alice
    device: phone
  register: alice_phone
  no_log: true

- name: Save the new password for alice on the controller, readable by the operator only
  ansible.builtin.copy:
    content: "{{ alice_phone.login }} {{ alice_phone.password }}\n"
    dest: "{{ playbook_dir }}/secrets/alice-phone.txt"
    mode: "0600"
  delegate_to: localhost
  when: alice_phone.password is not none
  no_log: true

- name: Replace the password of a phone that may have leaked it
  hardened.mailhost.app_password:
    user: alice
    device: phone
    regenerate: true
  register: alice_phone
  no_log: true

- name: Remove the app password of a lost tablet
  hardened.mailhost.app_password:
    user: bob
    device: tablet
    state: absent

- name: Every device of the office in one run (new passwords by login, hence no_log)
  hardened.mailhost.app_password:
    devices:
      - {user: alice, device: phone}
      - {user: bob, device: laptop}
      - {user: bob, device: tablet, state: absent}
  register: office
  no_log: true
"""

RETURN = r"""
login:
  description: The user name the device logs in with, C(<user>+<device>).
  returned: with O(user) and O(device)
  type: str
  sample: alice+phone
password:
  description:
    - The new app password, or V(null) when no password was made in this run.
    - "Secret; the calling task must use C(no_log: true)."
  returned: with O(user) and O(device), when O(state=present)
  type: str
  sample: k7mqz-4hxbd-pt9wa-3nrce
devices:
  description: One entry per element of O(devices), in the same order. No password, no hash.
  returned: with O(devices)
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
    state:
      description: The state asked for.
      type: str
      sample: present
    changed:
      description: Whether this device's line was (or in check mode would be) added, replaced or removed.
      type: bool
      sample: true
passwords:
  description:
    - The new app passwords made in this run, by login name. Empty in check mode.
    - "Secret; the calling task must use C(no_log: true). Loop over its keys, never its values."
  returned: with O(devices)
  type: dict
  sample: {alice+phone: k7mqz-4hxbd-pt9wa-3nrce}
entries:
  description:
    - The devices in the file after this run (in check mode, as it is now). No passwords,
      no hashes.
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
path:
  description: The passwd-file.
  returned: always
  type: str
  sample: /etc/dovecot/app-passwords
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hardened.mailhost.plugins.module_utils import _app_password


def _logins(store):
    return "".join("%s\n" % e["login"] for e in store.list())


def _many(module, store):
    try:
        before = _logins(store)
        fix_before = store.needs_fixing()
        devices, passwords, entries = store.apply(module.params["devices"], check_mode=module.check_mode)
    except _app_password.AppPasswordError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg="cannot update the app password file %s: %s" % (store.path, exc))
    public = sorted((e.public() for e in entries), key=lambda e: (e["user"], e["device"]))
    result = dict(changed=any(d["changed"] for d in devices) or bool(entries and fix_before),
                  path=store.path, devices=devices, passwords=passwords, entries=public)
    if module._diff:
        result["diff"] = dict(before=before, after="".join("%s\n" % e["login"] for e in public),
                              before_header=store.path, after_header=store.path)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            user=dict(type="str"),
            device=dict(type="str"),
            devices=dict(type="list", elements="dict", options=dict(
                user=dict(type="str", required=True),
                device=dict(type="str", required=True),
                state=dict(type="str", default="present", choices=["present", "absent"]),
                regenerate=dict(type="bool", default=False),
            )),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            regenerate=dict(type="bool", default=False),
            passwd_file=dict(type="path", default=_app_password.DEFAULT_PATH, no_log=False),
            group=dict(type="str", default="dovecot"),
        ),
        mutually_exclusive=[["devices", "user"], ["devices", "device"], ["devices", "state"],
                            ["devices", "regenerate"]],
        required_one_of=[["devices", "user"]],
        required_together=[["user", "device"]],
        supports_check_mode=True,
    )
    params = module.params
    store = _app_password.AppPasswordFile(params["passwd_file"], group=params["group"])
    if params["devices"] is not None:
        _many(module, store)
    state = params["state"]
    result = dict(changed=False, path=store.path)
    try:
        before = _logins(store)
        user, device = params["user"], params["device"]
        result["login"] = _app_password.login_name(user, device)
        if state == "present":
            changed, password = store.present(user, device, regenerate=params["regenerate"],
                                              check_mode=module.check_mode)
            result["password"] = password
        else:
            changed = store.absent(user, device, check_mode=module.check_mode)
        result["changed"] = changed
        result["entries"] = store.list()
        if module._diff:
            after = before
            if module.check_mode and changed:
                others = [line for line in before.splitlines() if line != result["login"]]
                if state == "present":
                    others.append(result["login"])
                after = "".join("%s\n" % line for line in sorted(others))
            elif not module.check_mode:
                after = _logins(store)
            result["diff"] = dict(before=before, after=after,
                                  before_header=store.path, after_header=store.path)
    except _app_password.AppPasswordError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg="cannot update the app password file %s: %s" % (store.path, exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
