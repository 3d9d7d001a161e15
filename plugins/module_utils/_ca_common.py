# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every part of the client CA shares: errors, times, serials, fingerprints.

Private API (leading underscore), no Ansible import. ``_ca`` (the
``CertificateAuthority``), ``_ca_index``, ``_ca_crl`` and ``_ca_exports``
build on it; ``_ca`` re-exports the names callers use.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os
import re

try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError as _exc:  # reported by the modules through missing_required_lib
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = _exc


class CAError(Exception):
    """A problem the operator can act on; the message says what and where."""


class CAExistsError(CAError):
    """``init`` found a CA already in the folder."""


class CAPassphraseError(CAError):
    """The passphrase does not open the CA key."""


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def aware(value):
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


def iso(value):
    """The index's fixed-width UTC form, ``YYYY-MM-DDTHH:MM:SSZ`` (sorts like the time)."""
    return aware(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    """Parse the index's ``YYYY-MM-DDTHH:MM:SSZ`` form into an aware datetime."""
    if len(text) != 20 or text[4] != "-" or text[10] != "T" or text[19] != "Z":
        raise ValueError("not a YYYY-MM-DDTHH:MM:SSZ time: %r" % (text,))
    return datetime.datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                             int(text[14:16]), int(text[17:19]), tzinfo=datetime.timezone.utc)


# cryptography >= 42 has *_utc properties; Debian 12 ships 38 (naive UTC).
def cert_not_before(cert):
    return aware(getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before)


def cert_not_after(cert):
    return aware(getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after)


def crl_last_update(crl):
    return aware(getattr(crl, "last_update_utc", None) or crl.last_update)


def crl_next_update(crl):
    value = getattr(crl, "next_update_utc", None) or crl.next_update
    return None if value is None else aware(value)


def fingerprint_of(cert):
    """SHA-256 fingerprint of a certificate as Postfix prints ``ccert_fingerprint``."""
    return ":".join("%02X" % b for b in bytearray(cert.fingerprint(hashes.SHA256())))


def serial_hex(number):
    text = "%X" % number
    return text if len(text) % 2 == 0 else "0" + text


def parse_serial(value):
    """Accept an int or a hex string (``0x`` prefix, colons, any case allowed)."""
    if isinstance(value, bool):
        raise CAError("serial must be a hex string or an integer, not %r" % (value,))
    if isinstance(value, int):
        if value <= 0:
            raise CAError("serial must be positive, got %d" % value)
        return serial_hex(value)
    text = str(value).strip().replace(":", "")
    if text.lower().startswith("0x"):
        text = text[2:]
    if not text or not re.fullmatch(r"[0-9A-Fa-f]{1,40}", text):
        raise CAError("serial %r is not a hex number (as printed in the index or by openssl)" % (value,))
    return serial_hex(int(text, 16))


def hash_for(key):
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def public_der(key_or_public):
    public = key_or_public.public_key() if hasattr(key_or_public, "public_key") else key_or_public
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def key_type_of_public(public):
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "ec-p%d" % public.curve.key_size
    return "rsa-%d" % public.key_size


def make_private_dir(folder):
    """Create ``folder`` (and parents) 0700, or narrow an existing one to 0700."""
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700)
    os.chmod(folder, 0o700)


def check_crl_days(days):
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise CAError("CRL next-update must be 1-3650 days, got %r" % (days,))
