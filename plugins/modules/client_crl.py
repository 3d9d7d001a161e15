#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: client_crl
short_description: Keep the client CA's CRL and export files fresh
version_added: 0.1.0
description:
  - Re-signs the certificate revocation list of the CA in O(ca_dir) (next CRL number,
    next update O(next_update_days) from now) when it is missing, lacks a revocation
    recorded in the index, has a bad signature, has less than O(min_valid_days) left, or
    O(force=true).
  - Then rewrites the export files whose content changed, C(export/dovecot_ca_crl.pem)
    (CA certificate followed by the CRL) and C(export/postfix_relay_clientcerts) (the
    SHA-256 fingerprints of the certificates valid now, so expired ones drop out).
  - Dovecot refuses every client certificate once its CRL has expired, and Postfix never
    reads CRLs; run this (the C(refresh_crl.yml) playbook, or the C(ca) role's host-mode
    timer) well within the CRL's validity and push both files to the mail hosts.
author:
  - hardened.mailhost developers (!UNKNOWN)
extends_documentation_fragment:
  - hardened.mailhost.attributes
  - hardened.mailhost.client_ca
  - hardened.mailhost.client_ca.passphrase
attributes:
  check_mode:
    support: full
    details: Reports whether the CRL would be re-signed and the exports rewritten.
  diff_mode:
    support: full
    details: Shows CRL number, next update and revoked serials before and after.
  idempotent:
    support: partial
    details:
      - Without O(force) a second run changes nothing. With O(force=true) every run signs a new CRL.
options:
  next_update_days:
    description:
      - Validity of a newly signed CRL in days (1 to 3650). Defaults to the CA's
        C(crl_next_update_days) (set by M(hardened.mailhost.client_ca), 30 by default).
    type: int
  min_valid_days:
    description:
      - Re-sign the CRL when it has fewer days than this left. Defaults to half of the
        effective O(next_update_days).
    type: int
  force:
    description:
      - Re-sign the CRL even if it is current.
    type: bool
    default: false
seealso:
  - module: hardened.mailhost.client_ca
  - module: hardened.mailhost.client_cert
"""

EXAMPLES = r"""
- name: Refresh the CRL when half of its validity has passed
  hardened.mailhost.client_crl:
    ca_dir: "{{ hardened_ca_dir }}"
    passphrase: "{{ hardened_ca_passphrase }}"
  delegate_to: localhost
  run_once: true

- name: Sign a new CRL valid for 7 days now
  hardened.mailhost.client_crl:
    ca_dir: "{{ hardened_ca_dir }}"
    passphrase: "{{ hardened_ca_passphrase }}"
    next_update_days: 7
    force: true
"""

RETURN = r"""
crl:
  description: The CRL after this run (before it, in check mode).
  returned: always
  type: dict
  contains:
    number:
      description: CRL number.
      type: int
      sample: 7
    last_update:
      description: When the CRL was signed (UTC, ISO 8601).
      type: str
      sample: "2025-05-01T10:00:00Z"
    next_update:
      description: When the CRL expires (UTC, ISO 8601).
      type: str
      sample: "2025-05-31T10:00:00Z"
    days_left:
      description: Days until next update (fractional).
      type: float
      sample: 29.99
    revoked_serials:
      description: Serials the CRL lists.
      type: list
      elements: str
crl_signed:
  description: Whether a new CRL was (or would be) signed.
  returned: always
  type: bool
reasons:
  description: Why the CRL was (or would be) re-signed; empty when it was current.
  returned: always
  type: list
  elements: str
  sample: ["expires in 3.5 days"]
exports_changed:
  description: Whether an export file was (or would be) rewritten.
  returned: always
  type: bool
crl_path:
  description: Path of the CRL.
  returned: always
  type: str
dovecot_ca_crl_path:
  description: Path of the CA+CRL file for Dovecot.
  returned: always
  type: str
postfix_map_path:
  description: Path of the fingerprint map source for Postfix.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.hardened.mailhost.plugins.module_utils import _ca


def _status_text(status):
    return "".join("%s: %s\n" % (key, status.get(key))
                   for key in ("number", "next_update", "revoked_serials"))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ca_dir=dict(type="path", required=True),
            passphrase=dict(type="str", required=True, no_log=True),
            next_update_days=dict(type="int"),
            min_valid_days=dict(type="int"),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if not _ca.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"),
                         exception=str(_ca.CRYPTOGRAPHY_IMPORT_ERROR))
    p = module.params
    ca = _ca.CertificateAuthority(p["ca_dir"], p["passphrase"])
    try:
        ca.check()
        info = ca.info()
        days = info["crl_next_update_days"] if p["next_update_days"] is None else p["next_update_days"]
        if not 1 <= days <= 3650:
            raise _ca.CAError("next_update_days must be 1-3650, got %d" % days)
        min_valid = days / 2.0 if p["min_valid_days"] is None else p["min_valid_days"]
        if min_valid < 0 or min_valid >= days:
            raise _ca.CAError("min_valid_days must be between 0 and next_update_days - 1 (%d), got %s"
                              % (days - 1, p["min_valid_days"]))
        before = info["crl"]
        reasons = []
        if p["force"]:
            reasons.append("forced")
        if not before["exists"]:
            reasons.append("missing")
        elif before.get("corrupt"):
            reasons.append("unreadable")
        else:
            if before["missing"]:
                reasons.append("lacks revoked serials %s" % ", ".join(before["missing"]))
            if not before["signature_valid"]:
                reasons.append("bad signature")
            if before["days_left"] is None or before["days_left"] < min_valid:
                reasons.append("expires in %s days" % before["days_left"])
        if info["ca"]["expired"]:
            raise _ca.CAError("the CA certificate expired on %s: create a new CA" % info["ca"]["not_after"])
        result = dict(changed=False, crl_signed=bool(reasons), reasons=reasons, crl=before,
                      crl_path=ca.path(_ca.CRL_FILE), dovecot_ca_crl_path=ca.dovecot_export_path,
                      postfix_map_path=ca.postfix_export_path)
        if module.check_mode:
            result["exports_changed"] = bool(reasons) or not ca.exports_current()
        elif reasons:
            result["crl"] = ca.crl(next_update_days=days)
            result["exports_changed"] = True  # crl() rewrote the Dovecot file
        else:
            result["exports_changed"] = ca.refresh_exports()
        result["changed"] = result["crl_signed"] or result["exports_changed"]
        if module._diff and result["changed"]:
            after = result["crl"] if not module.check_mode else dict(
                before, number="(next)", next_update="(now + %d days)" % days)
            result["diff"] = dict(before=_status_text(before), after=_status_text(after))
    except _ca.CAError as exc:
        module.fail_json(msg=str(exc))
    except (IOError, OSError) as exc:
        module.fail_json(msg="cannot use the CA folder %s: %s" % (p["ca_dir"], exc))
    for warning in ca.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
