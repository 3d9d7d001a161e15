# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The client CA's CRL: sign it from the index, read it back, compare the two.

Private API (leading underscore), no Ansible import. ``_ca.CertificateAuthority``
decides when to sign (under its lock, with its key); this module only knows
the X.509 side. Dovecot refuses every client certificate once the CRL has
expired, so ``crl_status`` reports the days left as well as what is missing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

from ansible_collections.hardened.mailhost.plugins.module_utils import _fileutil
from ansible_collections.hardened.mailhost.plugins.module_utils._ca_common import (
    CAError,
    check_crl_days,
    crl_last_update,
    crl_next_update,
    hash_for,
    iso,
    parse_time,
    serial_hex,
)

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
except ImportError:  # _ca_common reports the missing library
    pass


def sign_crl(path, number, revoked, key, cert, days, now):
    """Sign CRL ``number`` listing ``revoked`` ((serial, revoked_at, reason) rows), write it to ``path``.

    Returns the CRL. The caller takes the number from the index (it is
    committed there first, so a CRL is never signed twice with one number).
    """
    check_crl_days(days)
    reasons = {}
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=days))
        .add_extension(x509.CRLNumber(int(number)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
    )
    for serial, revoked_at, reason in revoked:
        entry = (x509.RevokedCertificateBuilder()
                 .serial_number(int(serial, 16))
                 .revocation_date(parse_time(revoked_at)))
        reason = reason or "unspecified"
        if reason != "unspecified":  # RFC 5280: omit the code rather than say unspecified
            if reason not in reasons:
                reasons[reason] = x509.CRLReason(getattr(x509.ReasonFlags, reason))
            entry = entry.add_extension(reasons[reason], critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(key, hash_for(key))
    _fileutil.atomic_write(path, crl.public_bytes(serialization.Encoding.PEM), mode=0o600)
    return crl


def load_crl(path):
    """The CRL in ``path`` (cryptography object) or ``None`` when missing."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError):
        return None
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise CAError("CRL %s is corrupt: %s" % (path, exc))


def crl_status(path, wanted, ca_public_key, now):
    """What the CRL in ``path`` says and whether it lists every serial of ``wanted``.

    Keys: ``exists``, ``corrupt`` (unreadable file), ``number``, ``last_update``, ``next_update``,
    ``days_left`` (float), ``revoked_serials`` (sorted hex), ``missing``
    (revoked in the index but not in the CRL), ``signature_valid``.
    """
    wanted = sorted(wanted)
    try:
        crl = load_crl(path)
    except CAError:
        crl = False  # unreadable: derived data, re-signing repairs it
    if crl is None or crl is False:  # (an empty CRL object is falsy)
        return {"exists": crl is False, "corrupt": crl is False, "number": None,
                "last_update": None, "next_update": None, "days_left": None,
                "revoked_serials": [], "missing": wanted, "signature_valid": False}
    listed = sorted(serial_hex(entry.serial_number) for entry in crl)
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    next_update = crl_next_update(crl)
    try:
        valid = crl.is_signature_valid(ca_public_key)
    except (InvalidSignature, TypeError, ValueError):
        valid = False
    return {
        "exists": True,
        "corrupt": False,
        "number": number,
        "last_update": iso(crl_last_update(crl)),
        "next_update": iso(next_update) if next_update else None,
        "days_left": round((next_update - now).total_seconds() / 86400.0, 2) if next_update else None,
        "revoked_serials": listed,
        "missing": sorted(set(wanted) - set(listed)),
        "signature_valid": bool(valid),
    }
