#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: client_ca_info
short_description: Show the client CA, its CRL and every certificate it issued
version_added: 0.1.0
description:
  - Reads the CA in O(ca_dir) and returns its certificate, the state of its CRL and one
    entry per certificate in its index (state, expiry, days left, SHA-256 fingerprint).
  - Needs no passphrase and changes nothing. Contains no secret.
author:
  - hardened.mailhost developers (!UNKNOWN)
extends_documentation_fragment:
  - hardened.mailhost.attributes
  - hardened.mailhost.client_ca
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  email:
    description:
      - Only list the certificates of this e-mail address (case-insensitive).
    type: str
  status:
    description:
      - Only list certificates in these states.
    type: list
    elements: str
    choices: [valid, revoked, expired, not_yet_valid]
seealso:
  - module: hardened.mailhost.client_cert
"""

EXAMPLES = r"""
- name: Read the CA
  hardened.mailhost.client_ca_info:
    ca_dir: "{{ hardened_ca_dir }}"
  delegate_to: localhost
  run_once: true
  register: ca_info

- name: Warn about certificates that expire within 14 days
  ansible.builtin.debug:
    msg: "{{ item.email }} {{ item.device }} expires in {{ item.days_left }} days"
  loop: "{{ ca_info.certificates | selectattr('status', 'eq', 'valid') | selectattr('days_left', 'lt', 14) }}"
"""

RETURN = r"""
ca:
  description: The CA certificate.
  returned: always
  type: dict
  contains:
    subject:
      description: Subject (RFC 4514).
      type: str
    not_after:
      description: End of validity (UTC, ISO 8601).
      type: str
    days_left:
      description: Whole days until the CA expires (negative once expired).
      type: int
    expired:
      description: Whether the CA has expired.
      type: bool
    fingerprint_sha256:
      description: SHA-256 fingerprint.
      type: str
    key_type:
      description: Key type, for example C(ec-p256).
      type: str
    key_encryption:
      description:
        - How C(ca.key) is encrypted, read from the file without the passphrase (null when
          unreadable). C(current=false) means weaker than this collection's standard
          (PBKDF2-HMAC-SHA256, 600000 rounds, AES-256-CBC); re-encrypt it with
          M(hardened.mailhost.client_ca) O(hardened.mailhost.client_ca#module:rekey=true).
      type: dict
      sample: {scheme: pbes2, kdf: pbkdf2, iterations: 600000, prf: hmacWithSHA256, cipher: aes-256-cbc, current: true}
crl:
  description: The current CRL.
  returned: always
  type: dict
  contains:
    exists:
      description: Whether C(crl.pem) exists.
      type: bool
    corrupt:
      description: Whether C(crl.pem) exists but cannot be read (M(hardened.mailhost.client_crl) re-signs it).
      type: bool
    number:
      description: CRL number.
      type: int
    next_update:
      description: When the CRL expires (UTC, ISO 8601).
      type: str
    days_left:
      description: Days until next update (fractional, negative once expired).
      type: float
    revoked_serials:
      description: Serials the CRL lists.
      type: list
      elements: str
    missing:
      description: Serials revoked in the index but not yet in the CRL (re-sign it).
      type: list
      elements: str
    signature_valid:
      description: Whether the CRL is signed by this CA.
      type: bool
certificates:
  description: One entry per certificate (after the O(email) and O(status) filters).
  returned: always
  type: list
  elements: dict
  contains:
    serial:
      description: Serial number (hex).
      type: str
    email:
      description: E-mail address (CN and rfc822Name).
      type: str
    name:
      description: Person's name (O).
      type: str
    device:
      description: Device label (OU).
      type: str
    status:
      description: C(valid), C(revoked), C(expired) or C(not_yet_valid) now.
      type: str
    not_after:
      description: End of validity (UTC, ISO 8601).
      type: str
    days_left:
      description: Whole days left (negative once expired).
      type: int
    fingerprint_sha256:
      description: SHA-256 fingerprint, uppercase hex with colons.
      type: str
    revoked_at:
      description: Revocation time, or null.
      type: str
    revocation_reason:
      description: Revocation reason, or null.
      type: str
    relay_only:
      description:
        - Whether the certificate was issued as a relay-only identity (an address outside
          the served mail domains; it may relay through Postfix but never opens a mailbox).
      type: bool
exports:
  description: Paths of the export files.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.hardened.mailhost.plugins.module_utils import _ca


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ca_dir=dict(type="path", required=True),
            email=dict(type="str"),
            status=dict(type="list", elements="str",
                        choices=["valid", "revoked", "expired", "not_yet_valid"]),
        ),
        supports_check_mode=True,
    )
    if not _ca.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"),
                         exception=str(_ca.CRYPTOGRAPHY_IMPORT_ERROR))
    p = module.params
    try:
        info = _ca.CertificateAuthority(p["ca_dir"]).info()
    except _ca.CAError as exc:
        module.fail_json(msg=str(exc))
    except (IOError, OSError) as exc:
        module.fail_json(msg="cannot read the CA folder %s: %s" % (p["ca_dir"], exc))
    certs = info["certificates"]
    if p["email"]:
        certs = [c for c in certs if c["email"] == p["email"].lower()]
    if p["status"]:
        certs = [c for c in certs if c["status"] in p["status"]]
    module.exit_json(changed=False, ca=info["ca"], crl=info["crl"], certificates=certs,
                     crl_next_update_days=info["crl_next_update_days"], exports=info["exports"])


if __name__ == "__main__":
    main()
