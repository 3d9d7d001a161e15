#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: userdb_pin
short_description: Manage a user's PIN in the Berkeley DB read by pam_userdb
version_added: 0.1.0
description:
  - Sets, generates or removes one user's entry in the Berkeley DB hash file that
    C(pam_userdb) reads, for example the sudo PIN database of the P(hardened.mailhost.sudo_pin#role) role.
  - With O(users), does the same for a whole list in one run, locking, reading
    and writing the database once. Every entry is checked first; one bad entry fails the task naming
    each user concerned (never a PIN), and nothing is changed for anyone.
  - The value stored is a SHA-512 crypt string (V($6$), 16-character random salt) made by the
    system's libxcrypt, so it matches what C(pam_userdb crypt=crypt) checks. Works on
    Python 3.13, which has no C(crypt) module.
  - An entry whose hash already matches O(pin) is left alone, so the module is idempotent
    while the salt stays random.
  - The PIN is checked against a policy (length, digits only, not the user name, not trivial)
    before anything is touched; a PIN that breaks it fails the task and changes nothing.
  - The database is rebuilt in a private folder beside the old file and renamed over it;
    the file is owned by root with mode V(0600).
author:
  - hardened.mailhost developers (!UNKNOWN)
requirements:
  - Debian's C(python3) on the managed host (its C(dbm.ndbm) writes Berkeley DB 5.3, the
    format C(pam_userdb) reads) and C(libcrypt.so.1) (libxcrypt).
extends_documentation_fragment:
  - hardened.mailhost.attributes
attributes:
  check_mode:
    support: full
    details: Reports what would change; a PIN is never generated in check mode (except with O(propose=true), which never writes).
  diff_mode:
    support: full
    details: The diff says whether the user has a PIN and whether it is new, never the PIN or its hash.
  idempotent:
    support: partial
    details: Idempotent for O(pin) and for O(generate) without O(rotate); O(rotate=true) makes a new PIN on every run.
options:
  db:
    description:
      - Path of the database as C(pam_userdb)'s C(db=) option takes it, B(without) the C(.db)
        suffix; the file written is O(db) plus C(.db).
    type: path
    default: /etc/security/sudo_pin
  user:
    description:
      - User name used as the key (the name PAM authenticates).
      - Exactly one of O(user) and O(users) is required.
    type: str
    aliases: [name]
  users:
    description:
      - Entries for many users, handled in one run. Each entry carries its own O(users[].state),
        O(users[].pin), O(users[].generate) and O(users[].rotate); O(db), O(propose) and the policy
        options apply to all of them.
      - An empty list changes nothing.
      - Mutually exclusive with O(user), O(state), O(pin), O(generate) and O(rotate).
    type: list
    elements: dict
    version_added: 0.3.0
    suboptions:
      name:
        description: User name used as the key.
        type: str
        required: true
      state:
        description: Whether the user has an entry.
        type: str
        choices: [present, absent]
        default: present
      pin:
        description: The PIN to store (as O(pin)). Never logged.
        type: str
      generate:
        description: Generate a PIN when the user has none (as O(generate)).
        type: bool
        default: false
      rotate:
        description: With O(users[].generate=true), replace an existing entry (as O(rotate)).
        type: bool
        default: false
  state:
    description: Whether the user has an entry.
    type: str
    choices: [present, absent]
    default: present
  pin:
    description:
      - The PIN to store. Keep it in Ansible Vault.
      - Exclusive with O(generate=true); one of them is required with O(state=present).
    type: str
  generate:
    description:
      - Generate a random PIN when the user has no entry yet (or always with O(rotate=true))
        and return it once in RV(pin). An existing entry is kept.
    type: bool
    default: false
  generate_length:
    description: Length of a generated PIN; never shorter than O(min_length).
    type: int
    default: 8
  rotate:
    description: With O(generate=true), replace an existing entry by a new random PIN.
    type: bool
    default: false
  propose:
    description:
      - With O(generate=true), store nothing. When the user would get a new PIN (no entry yet,
        or O(rotate=true)), draw one that passes the policy and return it in RV(pin); RV(action)
        says what storing it would do and the task never reports a change.
      - Lets a playbook keep the PIN safe first (for example in a file on the controller with
        M(hardened.mailhost.controller_secret)) and store it afterwards with O(pin), so that a
        PIN is never stored that nobody received.
    type: bool
    default: false
    version_added: 0.2.0
  min_length:
    description: Shortest PIN accepted.
    type: int
    default: 6
  digits_only:
    description: Accept only the digits 0-9 (and generate digits only).
    type: bool
    default: true
  refuse_trivial:
    description: Refuse a PIN made of one repeated character or a straight run such as V(123456).
    type: bool
    default: true
notes:
  - A PIN is guessable offline from its hash in seconds; what protects it is the file's mode
    (root only) and C(pam_faillock) limiting online guesses, as the C(sudo_pin) role configures.
  - "Run the task that uses O(generate) with C(no_log: true) and store RV(pin) yourself: it is
    returned once and cannot be recovered later."
seealso:
  - name: pam_userdb(8)
    description: The PAM module that reads this database.
    link: https://man7.org/linux/man-pages/man8/pam_userdb.8.html
"""

EXAMPLES = r"""
- name: Give alice her sudo PIN from the vault
  hardened.mailhost.userdb_pin:
    user: alice
    pin: "{{ vault_sudo_pins.alice }}"

- name: Give bob a random PIN if he has none yet
  hardened.mailhost.userdb_pin:
    user: bob
    generate: true
  register: bob_pin
  no_log: true

- name: Draw a PIN for dave (stored nowhere yet)
  hardened.mailhost.userdb_pin:
    user: dave
    generate: true
    propose: true
  register: dave_pin
  no_log: true

- name: Hand it to the operator first
  hardened.mailhost.controller_secret:
    path: "~/pins/{{ inventory_hostname }}/dave.pin"
    content: "{{ dave_pin.pin }}"
    owner: "{{ inventory_hostname }}"
  when: dave_pin.pin is defined
  no_log: true

- name: Then store it
  hardened.mailhost.userdb_pin:
    user: dave
    pin: "{{ dave_pin.pin }}"
  when: dave_pin.pin is defined
  no_log: true

- name: Remove carol's PIN
  hardened.mailhost.userdb_pin:
    db: /etc/security/sudo_pin
    user: carol
    state: absent

- name: All users in one run (one lock, one read, one write of the database)
  hardened.mailhost.userdb_pin:
    users:
      - {name: alice, pin: "{{ vault_sudo_pins.alice }}"}
      - {name: bob, generate: true}
      - {name: carol, state: absent}
  register: pins
  no_log: true
"""

RETURN = r"""
db:
  description: The database file written or checked (O(db) plus C(.db)).
  type: str
  returned: always
  sample: /etc/security/sudo_pin.db
action:
  description: What was (or in check mode would be) done.
  type: str
  returned: with O(user)
  sample: created
  choices: [created, updated, removed, fixed_permissions, none]
pin:
  description:
    - The PIN generated in this run. Shown only once; register it with C(no_log).
    - With O(propose=true) the PIN drawn for the user, not stored.
  type: str
  returned: with O(user), when O(generate=true) made a new PIN outside check mode, or O(propose=true) drew one
  sample: "40718263"
users:
  description:
    - One entry per element of O(users), in the same order. Holds no PIN and no hash.
  type: list
  elements: dict
  returned: with O(users)
  contains:
    name:
      description: The user.
      type: str
      sample: bob
    state:
      description: The state asked for.
      type: str
      sample: present
    action:
      description: What was (or would be; with O(propose=true), what storing would) be done for this user.
      type: str
      choices: [created, updated, removed, none]
      sample: created
    changed:
      description: Whether this user's entry was (or in check mode would be) changed; always false with O(propose=true).
      type: bool
      sample: true
pins:
  description:
    - The PINs generated in this run (or drawn with O(propose=true)), by user name. Empty in
      check mode (unless O(propose=true)).
    - "Secret; the calling task must use C(no_log: true). Loop over its keys, never its values."
  type: dict
  returned: with O(users)
  sample: {bob: "40718263"}
fixed_permissions:
  description: Whether only the file's owner or mode was (or would be) corrected.
  type: bool
  returned: with O(users)
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hardened.mailhost.plugins.module_utils import _crypt, _userdb


def main():
    module = AnsibleModule(
        argument_spec=dict(
            db=dict(type="path", default="/etc/security/sudo_pin"),
            user=dict(type="str", aliases=["name"]),
            users=dict(type="list", elements="dict", options=dict(
                name=dict(type="str", required=True),
                state=dict(type="str", choices=["present", "absent"], default="present"),
                pin=dict(type="str", no_log=True),
                generate=dict(type="bool", default=False),
                rotate=dict(type="bool", default=False),
            )),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            pin=dict(type="str", no_log=True),
            generate=dict(type="bool", default=False),
            generate_length=dict(type="int", default=8),
            rotate=dict(type="bool", default=False),
            propose=dict(type="bool", default=False),
            min_length=dict(type="int", default=6),
            digits_only=dict(type="bool", default=True),
            refuse_trivial=dict(type="bool", default=True),
        ),
        mutually_exclusive=[["user", "users"], ["users", "state"], ["users", "pin"],
                            ["users", "generate"], ["users", "rotate"]],
        required_one_of=[["user", "users"]],
        supports_check_mode=True,
    )
    p = module.params
    try:
        policy = _userdb.PinPolicy(min_length=p["min_length"], digits_only=p["digits_only"],
                                   refuse_trivial=p["refuse_trivial"])
        if p["users"] is not None:
            result = _userdb.ensure_pins(
                p["db"], p["users"], generate_length=p["generate_length"], policy=policy,
                check_mode=module.check_mode, propose=p["propose"])
        else:
            result = _userdb.ensure_pin(
                p["db"], p["user"], state=p["state"], pin=p["pin"],
                generate=p["generate"], generate_length=p["generate_length"], rotate=p["rotate"],
                policy=policy, check_mode=module.check_mode, propose=p["propose"])
    except (_userdb.PinPolicyError, _userdb.UserDBError, _crypt.CryptError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="cannot update %s: %s" % (p["db"], exc))
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = dict(before_header=result["db"], after_header=result["db"], **diff)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
