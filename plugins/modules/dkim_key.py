#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: dkim_key
short_description: Make and rotate the DKIM signing keys (RSA 2048 and Ed25519) of a mail domain
version_added: 0.4.0
description:
  - Runs on the mail host. Makes, once, a key set for O(domain) - an RSA 2048 key and an
    Ed25519 key (RFC 8463) under two dated selectors, by default C(<yyyymm>r) and
    C(<yyyymm>e) - and returns the public DNS TXT values (C(v=DKIM1; k=rsa; p=...) and
    C(v=DKIM1; k=ed25519; p=...)). Private keys never leave the host and are never returned.
  - Keys are written to C(<key_dir>/<domain>/<selector>.private), mode C(0600), owned by
    O(owner)/O(group) (the signer's user), through a temporary file and one rename. RSA keys
    are PEM (PKCS#1); Ed25519 keys are the base64 of the 32-byte seed, the form
    dkimpy-milter's C(KeyFileEd25519) reads. C(<key_dir>/<domain>/selectors.json) (mode
    C(0640), no key material) records each key set and its status.
  - "Rotation: a new key set (O(rotate=true), or a new O(selector)) starts C(pending): it is
    returned in RV(dns_records) so it can be published while the signer keeps signing with
    the C(active) set. The first run at least O(grace_days) after the new set was made
    switches: the new set becomes C(active) and the old one C(retired). A retired set stays
    published (mail signed before the switch still verifies) until it is removed with
    O(state=absent) and its O(selector)."
  - The very first key set of a domain is C(active) at once.
  - Bad input (a domain not in O(served_domains), a selector with characters other than
    C(a-z), C(0-9), C(-), an unknown owner) fails with a clear message and changes nothing.
author:
  - hardened.mailhost developers (!UNKNOWN)
extends_documentation_fragment:
  - hardened.mailhost.attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be made, switched or removed; no key is generated in check mode.
  diff_mode:
    support: full
    details: The diff shows the key state file (selectors, status, dates), never key material.
  idempotent:
    support: full
    details:
      - A second run with the same options changes nothing, until O(grace_days) have passed
        for a pending set (the switch is a change), or, with O(rotate=true), until a new
        UTC month begins (a new dated set is made).
options:
  domain:
    description: The mail domain whose messages are signed (the DKIM C(d=) value).
    type: str
    required: true
  served_domains:
    description:
      - The domains this host serves (the inventory's one list, C(hardened_mailhost_mail_domains)).
        O(domain) must be one of them.
    type: list
    elements: str
    required: true
  key_dir:
    description: Folder holding one sub-folder per domain.
    type: path
    default: /etc/dkimkeys
  selector:
    description:
      - Base name of the key set to make or remove; the selectors are this base plus
        O(rsa_suffix) and O(ed25519_suffix). Characters C(a-z), C(0-9) and C(-).
      - Defaults to the current UTC month (C(yyyymm)) when a set is made (the first run,
        or O(rotate=true)). An existing set of that name is kept.
      - Required with O(state=absent).
    type: str
  rotate:
    description:
      - Start a rotation to a new dated set that is published first and signs after
        O(grace_days). Nothing happens while a set is pending, when a set was already made
        in the current UTC month, or in the run that switches; so a rotate flag left on
        rotates at most once a month and never fails.
      - A new O(selector) starts a rotation to that name without this option.
    type: bool
    default: false
  grace_days:
    description:
      - Days between making a new set and switching the signer to it. Must cover the time
        the operator needs to publish the new TXT records plus their TTL at resolvers.
    type: int
    default: 7
  rsa_suffix:
    description: Added to the base name for the RSA selector.
    type: str
    default: r
  ed25519_suffix:
    description: Added to the base name for the Ed25519 selector.
    type: str
    default: e
  owner:
    description: User owning the key files and the domain folder (the signer's user, e.g. C(dkimpy-milter)).
    type: str
  group:
    description: Group of the key files and the domain folder.
    type: str
  state:
    description:
      - V(present) makes sure a key set exists (and switches a pending set when due);
        V(absent) removes the key set O(selector), which must not be the active one.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Needs the Python C(cryptography) library on the host (Debian's C(python3-cryptography)).
  - Debian's C(dkimpy-milter) is the expected signer, it signs with RSA and Ed25519 in one
    pass; RV(active) gives the file names and selectors for its C(KeyFile), C(KeyFileEd25519),
    C(Selector) and C(SelectorEd25519) settings.
seealso:
  - module: hardened.mailhost.mail_dns_records
"""

EXAMPLES = r"""
- name: DKIM keys for every served domain
  hardened.mailhost.dkim_key:
    domain: "{{ item }}"
    served_domains: "{{ hardened_mailhost_mail_domains }}"
    owner: dkimpy-milter
    group: dkimpy-milter
  loop: "{{ hardened_mailhost_mail_domains }}"
  register: dkim_keys

- name: Rotate (the new set is published first, signs after 7 days)
  hardened.mailhost.dkim_key:
    domain: example.org
    served_domains: [example.org]
    rotate: true
    owner: dkimpy-milter

- name: Remove a retired key set once its records are gone from DNS
  hardened.mailhost.dkim_key:
    domain: example.org
    served_domains: [example.org]
    selector: "202606"
    state: absent
"""

RETURN = r"""
domain:
  description: The domain, in lower case.
  returned: always
  type: str
  sample: example.org
folder:
  description: The domain's key folder.
  returned: always
  type: str
  sample: /etc/dkimkeys/example.org
active:
  description: The set the signer signs with (selectors and key files), or null when there is none.
  returned: always
  type: dict
  sample: {base: "202612", rsa: 202612r, ed25519: 202612e,
           rsa_file: /etc/dkimkeys/example.org/202612r.private,
           ed25519_file: /etc/dkimkeys/example.org/202612e.private}
selectors:
  description: Every key set with its status (active, pending, retired), dates and public keys.
  returned: always
  type: list
  elements: dict
  sample: [{base: "202612", status: active, created: "2026-12-02T11:00:00Z",
            keys: [{algorithm: rsa, selector: 202612r, txt: "v=DKIM1; k=rsa; p=MIIB...",
                    file: /etc/dkimkeys/example.org/202612r.private}]}]
dns_records:
  description:
    - One entry per selector to publish (active, pending and retired sets), with the TXT
      value for C(<selector>._domainkey.<domain>). Feed it to M(hardened.mailhost.mail_dns_records).
    - A key made in check mode has no value yet and is left out.
  returned: always
  type: list
  elements: dict
  sample: [{domain: example.org, selector: 202612e, algorithm: ed25519, status: active,
            value: "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}]
reasons:
  description: Why the keys were (or in check mode would be) changed.
  returned: always
  type: list
  elements: str
  sample: ["new key set 202612 (active)"]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.hardened.mailhost.plugins.module_utils import _dkim


def main():
    module = AnsibleModule(
        argument_spec=dict(
            domain=dict(type="str", required=True),
            served_domains=dict(type="list", elements="str", required=True),
            key_dir=dict(type="path", default="/etc/dkimkeys"),
            selector=dict(type="str"),
            rotate=dict(type="bool", default=False),
            grace_days=dict(type="int", default=7),
            rsa_suffix=dict(type="str", default="r"),
            ed25519_suffix=dict(type="str", default="e"),
            owner=dict(type="str"),
            group=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        required_if=[["state", "absent", ["selector"]]],
        supports_check_mode=True,
    )
    # A fresh host in check mode may not have the library yet (the signer's
    # package brings it): with no keys to read and none made, check mode
    # needs no cryptography; anything that does fails in public_value.
    if not _dkim.HAS_CRYPTOGRAPHY and not module.check_mode:
        module.fail_json(msg=missing_required_lib("cryptography"),
                         exception=str(_dkim.CRYPTOGRAPHY_IMPORT_ERROR))
    params = module.params
    try:
        request = _dkim.KeyRequest(
            domain=params["domain"], served_domains=params["served_domains"],
            key_dir=params["key_dir"], selector=params["selector"], rotate=params["rotate"],
            state=params["state"], grace_days=params["grace_days"],
            rsa_suffix=params["rsa_suffix"], ed25519_suffix=params["ed25519_suffix"],
            owner=params["owner"], group=params["group"])
        result = _dkim.ensure(request, check_mode=module.check_mode)
    except _dkim.DkimError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg="cannot write the DKIM keys: %s" % exc)
    diff = result.pop("diff")
    if module._diff:
        header = "%s/%s" % (result["folder"], _dkim.STATE_FILE)
        result["diff"] = dict(before=diff["before"], after=diff["after"],
                              before_header=header, after_header=header)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
