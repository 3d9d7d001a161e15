# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: ca_bundle_info
short_description: Read a client CA bundle (CA certificate + CRL) as Dovecot uses it
version_added: 0.1.0
description:
  - Parses the PEM text of a bundle such as the CA's C(export/dovecot_ca_crl.pem) and
    tells whether Dovecot could check client certificates with it - exactly one CA
    certificate, exactly one CRL, signed by that CA, and how long the CRL stays valid.
  - Runs on the controller in the play's process, so a check of the bundle costs no
    module run. Needs the Python C(cryptography) library on the controller.
author:
  - hardened.mailhost developers (!UNKNOWN)
options:
  _input:
    description: PEM text of the bundle (certificates and CRLs in any order).
    type: string
    required: true
  now:
    description:
      - Moment to count the CRL's remaining days from, as C(YYYYMMDDHHMMSSZ) in UTC.
      - Defaults to the current time.
    type: string
"""

EXAMPLES = r"""
- name: Refuse a bundle whose CRL is about to expire
  ansible.builtin.assert:
    that:
      - info.certificates == 1 and info.crls == 1
      - info.crl_signed_by_ca
      - info.crl_days_left >= 7
  vars:
    info: "{{ lookup('ansible.builtin.file', '/srv/ca/export/dovecot_ca_crl.pem') | hardened.mailhost.ca_bundle_info }}"
"""

RETURN = r"""
_value:
  description: What the bundle holds.
  type: dict
  contains:
    certificates:
      description: Number of certificates in the bundle.
      type: int
    crls:
      description: Number of CRLs in the bundle.
      type: int
    error:
      description: Why a PEM block could not be read, or V(null).
      type: str
    ca_subject:
      description: Subject of the first certificate, RFC 4514, or V(null).
      type: str
    crl_issuer:
      description: Issuer of the first CRL, RFC 4514, or V(null).
      type: str
    crl_signed_by_ca:
      description: The first CRL names the first certificate as its issuer and its signature verifies with that certificate's key.
      type: bool
    crl_next_update:
      description: Next update of the first CRL as C(YYYYMMDDHHMMSSZ), or V(null).
      type: str
    crl_days_left:
      description: Days from O(now) to the CRL's next update (one decimal; negative once expired), or V(null).
      type: float
"""

import datetime
import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_bytes, to_text

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - reported when the filter is used
    HAS_CRYPTOGRAPHY = False

STAMP = "%Y%m%d%H%M%SZ"
_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_CRL = re.compile(r"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)


def _utc(value):
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def _crl_signed_by(crl, cert):
    if crl.issuer != cert.subject:
        return False
    try:
        return crl.is_signature_valid(cert.public_key())
    except (TypeError, ValueError, InvalidSignature):
        return False


def ca_bundle_info(bundle, now=None):
    if not HAS_CRYPTOGRAPHY:
        raise AnsibleFilterError("ca_bundle_info needs the Python cryptography library on the controller")
    text = to_text(bundle, errors="surrogate_or_strict")
    if now is None:
        moment = datetime.datetime.now(datetime.timezone.utc)
    else:
        try:
            moment = datetime.datetime.strptime(to_text(now), STAMP).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise AnsibleFilterError("ca_bundle_info: now must look like 20260101000000Z, got %r" % (now,))
    cert_blocks, crl_blocks = _CERT.findall(text), _CRL.findall(text)
    info = dict(certificates=len(cert_blocks), crls=len(crl_blocks), error=None, ca_subject=None,
                crl_issuer=None, crl_signed_by_ca=False, crl_next_update=None, crl_days_left=None)
    try:
        cert = x509.load_pem_x509_certificate(to_bytes(cert_blocks[0])) if cert_blocks else None
        crl = x509.load_pem_x509_crl(to_bytes(crl_blocks[0])) if crl_blocks else None
    except ValueError as exc:
        info["error"] = "unreadable PEM block: %s" % exc
        return info
    if cert is not None:
        info["ca_subject"] = cert.subject.rfc4514_string()
    if crl is not None:
        info["crl_issuer"] = crl.issuer.rfc4514_string()
        # next_update_utc since cryptography 42; the naive property is deprecated there.
        next_update = crl.next_update_utc if hasattr(crl, "next_update_utc") else crl.next_update
        if next_update is not None:
            next_update = _utc(next_update)
            info["crl_next_update"] = next_update.strftime(STAMP)
            info["crl_days_left"] = round((next_update - moment).total_seconds() / 86400, 1)
        if cert is not None:
            info["crl_signed_by_ca"] = _crl_signed_by(crl, cert)
    return info


class FilterModule(object):
    def filters(self):
        return {"ca_bundle_info": ca_bundle_info}
