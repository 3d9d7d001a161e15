#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: client_ca
short_description: Create the private CA that signs mail client certificates
version_added: 0.1.0
description:
  - Creates the certificate authority that gives every mail device its own client
    certificate, if O(ca_dir) holds none yet, and otherwise checks that the
    existing one is complete and that O(passphrase) opens its key.
  - A new CA has a key of O(key_type) encrypted with O(passphrase), a self-signed
    certificate (C(basicConstraints CA:TRUE, pathlen:0), key usage
    C(keyCertSign, cRLSign)) valid for O(days), an empty index, a first CRL and the
    two export files for Postfix and Dovecot.
  - The key of a new CA is stored as PKCS#8 encrypted with PBES2, PBKDF2-HMAC-SHA256 at
    600000 rounds and AES-256-CBC. A new CA needs a passphrase of at least 16 characters.
  - An existing CA is never replaced; O(key_type), O(common_name),
    O(organization), O(days) and O(crl_next_update_days) only apply when the CA is
    created. A damaged or incomplete CA is an error, not a reason to make a new one.
  - A CA made by an older version (key encrypted with 2048 PBKDF2 rounds, or a passphrase
    shorter than 16 characters) still opens, with a warning. O(rekey=true) re-encrypts its
    key with the current parameters, under O(new_passphrase) when given; the only change
    this module ever makes to an existing CA.
author:
  - hardened.mailhost developers (!UNKNOWN)
extends_documentation_fragment:
  - hardened.mailhost.attributes
  - hardened.mailhost.client_ca
  - hardened.mailhost.client_ca.passphrase
attributes:
  check_mode:
    support: full
    details:
      - Reports whether a CA would be created or its key re-encrypted (after opening the key
        with the passphrase); nothing is generated or written in check mode.
  diff_mode:
    support: full
    details:
      - Shows the new CA certificate's subject, validity and fingerprint, or the key
        encryption before and after O(rekey) (never the key or a passphrase).
  idempotent:
    support: full
options:
  key_type:
    description:
      - Key of a new CA. NIST P-256 by default; RSA for environments that need it.
    type: str
    choices: [ec-p256, ec-p384, rsa-3072, rsa-4096]
    default: ec-p256
  common_name:
    description:
      - Common name of a new CA certificate (1 to 64 characters).
    type: str
    default: hardened.mailhost client CA
  organization:
    description:
      - Optional organization (O) of a new CA certificate.
    type: str
  days:
    description:
      - Validity of a new CA certificate in days. Device certificates cannot outlive it.
    type: int
    default: 3650
  crl_next_update_days:
    description:
      - Default validity of every CRL the CA signs (1 to 3650 days). Dovecot rejects
        every client certificate once the CRL has expired, so refresh it well before.
    type: int
    default: 30
  rekey:
    description:
      - Re-encrypt the key of an existing CA with the current parameters (PBKDF2-HMAC-SHA256,
        600000 rounds, AES-256-CBC), under O(new_passphrase) when given, else under
        O(passphrase), which must then have at least 16 characters.
      - The new key file is read back before it atomically replaces the old one; the old
        passphrase no longer opens it. Not a change when the key already has the current
        encryption and passphrase, or when O(passphrase) fails but O(new_passphrase) opens a
        key that was already re-encrypted (a repeated run).
      - Ignored when the CA is created by this run (a new key is always current); O(new_passphrase)
        is then an error.
    type: bool
    default: false
  new_passphrase:
    description:
      - New passphrase of the CA key with O(rekey=true), at least 16 characters. Store it in
        Ansible Vault as C(hardened_ca_passphrase) right after the run. Never logged.
    type: str
seealso:
  - module: hardened.mailhost.client_cert
  - module: hardened.mailhost.client_crl
  - module: hardened.mailhost.client_ca_info
"""

EXAMPLES = r"""
- name: Create the client CA on the controller (once)
  hardened.mailhost.client_ca:
    ca_dir: "{{ hardened_ca_dir }}"
    passphrase: "{{ hardened_ca_passphrase }}"
    organization: Example Mail
  delegate_to: localhost
  run_once: true

- name: Re-encrypt the key of a CA made by an older version, with a new passphrase
  hardened.mailhost.client_ca:
    ca_dir: "{{ hardened_ca_dir }}"
    passphrase: "{{ hardened_ca_passphrase }}"
    rekey: true
    new_passphrase: "{{ vault_new_ca_passphrase }}"
  delegate_to: localhost
  run_once: true

- name: Use an RSA CA valid for five years
  hardened.mailhost.client_ca:
    ca_dir: /srv/mail-ca
    passphrase: "{{ hardened_ca_passphrase }}"
    key_type: rsa-3072
    days: 1826
"""

RETURN = r"""
created:
  description: Whether the CA was created by this run (or would be, in check mode).
  returned: always
  type: bool
  sample: true
ca:
  description: The CA certificate; empty in check mode when the CA would be created.
  returned: always
  type: dict
  contains:
    subject:
      description: Subject in RFC 4514 form.
      type: str
      sample: CN=hardened.mailhost client CA
    not_after:
      description: End of validity (UTC, ISO 8601).
      type: str
      sample: "2035-05-01T10:00:00Z"
    days_left:
      description: Whole days until the CA expires.
      type: int
      sample: 3649
    fingerprint_sha256:
      description: SHA-256 fingerprint of the CA certificate.
      type: str
      sample: "AB:CD:..."
    key_type:
      description: Key type of the CA.
      type: str
      sample: ec-p256
    key_encryption:
      description: How the CA key file is encrypted (after O(rekey), the new file).
      type: dict
      sample: {scheme: pbes2, kdf: pbkdf2, iterations: 600000, prf: hmacWithSHA256, cipher: aes-256-cbc, current: true}
rekeyed:
  description: Whether the CA key was re-encrypted by this run (or would be, in check mode).
  returned: always
  type: bool
  sample: false
ca_cert_path:
  description: Path of the CA certificate.
  returned: always
  type: str
  sample: /home/op/.hardened-mailhost/ca/ca.crt
crl_path:
  description: Path of the current CRL.
  returned: always
  type: str
  sample: /home/op/.hardened-mailhost/ca/crl.pem
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.hardened.mailhost.plugins.module_utils import _ca, _ca_keyfile


def _summary_text(summary):
    return "".join("%s: %s\n" % (key, summary[key])
                   for key in ("subject", "not_before", "not_after", "key_type", "fingerprint_sha256"))


def _encryption_text(encryption, passphrase_changed=False):
    return "key encryption: %s\npassphrase: %s\n" % (
        _ca_keyfile.describe(encryption or {}) or "(unreadable)", "new" if passphrase_changed else "unchanged")


def _rekey(module, ca, result):
    p = module.params
    outcome = ca.rekey(new_passphrase=p["new_passphrase"], check_only=module.check_mode)
    result.update(changed=outcome["changed"], rekeyed=outcome["changed"], ca=ca.ca_summary())
    if module._diff and outcome["changed"]:
        result["diff"] = dict(before=_encryption_text(outcome["before"]),
                              after=_encryption_text(outcome["after"], outcome["passphrase_changed"]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ca_dir=dict(type="path", required=True),
            passphrase=dict(type="str", required=True, no_log=True),
            key_type=dict(type="str", default="ec-p256", choices=list(_ca.CA_KEY_TYPES)),
            common_name=dict(type="str", default="hardened.mailhost client CA"),
            organization=dict(type="str"),
            days=dict(type="int", default=3650),
            crl_next_update_days=dict(type="int", default=30),
            rekey=dict(type="bool", default=False),
            new_passphrase=dict(type="str", no_log=True),
        ),
        supports_check_mode=True,
    )
    if not _ca.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"),
                         exception=str(_ca.CRYPTOGRAPHY_IMPORT_ERROR))
    p = module.params
    ca = _ca.CertificateAuthority(p["ca_dir"], p["passphrase"])
    result = dict(changed=False, created=False, rekeyed=False, ca={},
                  ca_cert_path=ca.path(_ca.CA_CERT), crl_path=ca.path(_ca.CRL_FILE))
    if p["new_passphrase"] is not None and not p["rekey"]:
        module.fail_json(msg="new_passphrase is only used with rekey: true; nothing was changed")
    try:
        if ca.exists() and p["rekey"]:
            _rekey(module, ca, result)
        elif ca.exists():
            result["ca"] = ca.check()
        else:
            if p["new_passphrase"] is not None:
                raise _ca.CAError("new_passphrase re-encrypts an existing CA, and %s holds none: create the "
                                  "CA with passphrase alone; nothing was changed" % ca.ca_dir)
            if p["passphrase"] and len(p["passphrase"]) < _ca.MIN_PASSPHRASE:
                # before check mode returns, so a check run tells the truth too
                raise _ca.CAError("the passphrase of a new CA must have at least %d characters (got %d); "
                                  "nothing was created" % (_ca.MIN_PASSPHRASE, len(p["passphrase"])))
            if p["days"] < 1:
                raise _ca.CAError("days must be at least 1, got %d" % p["days"])
            if module.check_mode:
                if os.path.exists(p["ca_dir"]) and not os.path.isdir(p["ca_dir"]):
                    raise _ca.CAError("%s exists and is not a folder" % p["ca_dir"])
                result.update(changed=True, created=True)
                if module._diff:
                    result["diff"] = dict(before="", after="(a new CA would be created in %s)\n" % ca.ca_dir)
            else:
                info = ca.init(key_type=p["key_type"], common_name=p["common_name"],
                               organization=p["organization"], days=p["days"],
                               crl_next_update_days=p["crl_next_update_days"])
                result.update(changed=True, created=True, ca=info["ca"])
                if module._diff:
                    result["diff"] = dict(before="", after=_summary_text(info["ca"]))
    except _ca.CAError as exc:
        module.fail_json(msg=str(exc))
    except (IOError, OSError) as exc:
        module.fail_json(msg="cannot use the CA folder %s: %s" % (p["ca_dir"], exc))
    for warning in ca.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
