# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CA key at rest: PKCS#8 encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC).

Private API (leading underscore), no Ansible import. ``cryptography`` has no
way to choose the key derivation of an encrypted PKCS#8 key: its
``BestAvailableEncryption`` uses 2,048 PBKDF2 rounds, and
``PrivateFormat.encryption_builder()`` only serves OpenSSH and PKCS#12
(checked with 48 and 50). So the ``EncryptedPrivateKeyInfo`` (RFC 5208,
PBES2 of RFC 8018) is assembled here from ``cryptography``'s own PBKDF2 and
AES; every reader (``cryptography`` 38 on Debian 12 and newer, OpenSSL's
``pkcs8``) loads it as a standard encrypted key.

Why PBKDF2 and not scrypt: a memory-hard KDF would be better against GPUs,
but OpenSSL 3.0 (Debian 12, which decrypts the key for ``cryptography`` 38)
refuses scrypt parameters above 32 MiB when loading a key, which caps it at
N=2^14; PBKDF2-HMAC-SHA256 at 600,000 rounds is the documented minimum of
OWASP's password storage guidance and loads everywhere.

``key_encryption`` reads the parameters back from any encrypted PKCS#8 PEM
(no passphrase needed), so an old CA key is recognised and can be
re-encrypted on request.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import os

try:
    from cryptography.hazmat.primitives import hashes, padding, serialization
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
except ImportError:  # _ca reports the missing library
    pass

# RFC 8018 / NIST object identifiers.
OID_PBES2 = "1.2.840.113549.1.5.13"
OID_PBKDF2 = "1.2.840.113549.1.5.12"
OID_SCRYPT = "1.3.6.1.4.1.11591.4.11"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
PRF_NAMES = {
    "1.2.840.113549.2.7": "hmacWithSHA1",
    "1.2.840.113549.2.9": "hmacWithSHA256",
    "1.2.840.113549.2.10": "hmacWithSHA384",
    "1.2.840.113549.2.11": "hmacWithSHA512",
}
CIPHER_NAMES = {
    "2.16.840.1.101.3.4.1.2": "aes-128-cbc",
    "2.16.840.1.101.3.4.1.22": "aes-192-cbc",
    OID_AES256_CBC: "aes-256-cbc",
    "1.2.840.113549.3.7": "des-ede3-cbc",
}
OID_HMAC_SHA256 = "1.2.840.113549.2.9"

KDF_ROUNDS = 600000
SALT_BYTES = 16
PEM_LABEL = b"ENCRYPTED PRIVATE KEY"


class KeyFileError(ValueError):
    """The key file is not an encrypted PKCS#8 key this code can read."""


# ------------------------------------------------------------------ DER out
def _der_len(length):
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag, body):
    return bytes([tag]) + _der_len(len(body)) + body


def _seq(*items):
    return _tlv(0x30, b"".join(items))


def _int(value):
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _octets(data):
    return _tlv(0x04, data)


def _oid(dotted):
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


_NULL = b"\x05\x00"


def encrypt_private_key(key, passphrase, rounds=KDF_ROUNDS):
    """PEM of ``key`` as PKCS#8 encrypted with PBES2 (PBKDF2-HMAC-SHA256 ``rounds``, AES-256-CBC)."""
    if not passphrase:
        raise KeyFileError("an empty passphrase cannot protect the CA key")
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    salt, iv = os.urandom(SALT_BYTES), os.urandom(16)
    secret = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt,
                        iterations=rounds).derive(passphrase.encode("utf-8"))
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(padded) + encryptor.finalize()
    params = _seq(
        _seq(_oid(OID_PBKDF2), _seq(_octets(salt), _int(rounds), _seq(_oid(OID_HMAC_SHA256), _NULL))),
        _seq(_oid(OID_AES256_CBC), _octets(iv)),
    )
    der = _seq(_seq(_oid(OID_PBES2), params), _octets(sealed))
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return (b"-----BEGIN " + PEM_LABEL + b"-----\n" + b"\n".join(lines)
            + b"\n-----END " + PEM_LABEL + b"-----\n")


# ------------------------------------------------------------------- DER in
def _read(data, pos, want=None):
    """One TLV at ``pos``: (tag, body, next position)."""
    if pos + 2 > len(data):
        raise KeyFileError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise KeyFileError("bad DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise KeyFileError("truncated DER")
    if want is not None and tag != want:
        raise KeyFileError("unexpected DER tag 0x%02x (wanted 0x%02x)" % (tag, want))
    return tag, data[pos:pos + length], pos + length


def _items(body):
    pos, out = 0, []
    while pos < len(body):
        tag, value, pos = _read(body, pos)
        out.append((tag, value))
    return out


def _oid_text(body):
    first = body[0]
    arcs = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in bytearray(body[1:]):
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(str(arc) for arc in arcs)


def pem_to_der(pem):
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    begin, end = "-----BEGIN ENCRYPTED PRIVATE KEY-----", "-----END ENCRYPTED PRIVATE KEY-----"
    if begin not in text or end not in text:
        raise KeyFileError("not an encrypted PKCS#8 PEM")
    inner = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        return base64.b64decode("".join(inner.split()), validate=True)
    except ValueError:
        raise KeyFileError("the PEM body is not base64")


def key_encryption(pem):
    """How an encrypted PKCS#8 PEM is protected (reads no secret).

    Returns a dict: ``scheme`` (``pbes2`` or the OID of another scheme),
    ``kdf`` (``pbkdf2``, ``scrypt`` or an OID), ``iterations`` (PBKDF2 only,
    else ``None``), ``prf`` and ``cipher`` (names where known). Raises
    :class:`KeyFileError` when the data is not such a key.
    """
    _tag, top, _end = _read(pem_to_der(pem), 0, 0x30)
    _tag, algorithm, _pos = _read(top, 0, 0x30)
    fields = _items(algorithm)
    if not fields or fields[0][0] != 0x06:
        raise KeyFileError("no encryption algorithm in the key")
    scheme = _oid_text(fields[0][1])
    out = {"scheme": scheme, "kdf": None, "iterations": None, "prf": None, "cipher": None}
    if scheme != OID_PBES2:
        return out
    out["scheme"] = "pbes2"
    if len(fields) < 2 or fields[1][0] != 0x30:
        raise KeyFileError("PBES2 without parameters")
    kdf, cipher = [value for tag, value in _items(fields[1][1]) if tag == 0x30][:2]
    kdf_fields = _items(kdf)
    kdf_oid = _oid_text(kdf_fields[0][1])
    if kdf_oid == OID_PBKDF2:
        out["kdf"] = "pbkdf2"
        params = _items(kdf_fields[1][1])
        out["iterations"] = int.from_bytes(params[1][1], "big")
        out["prf"] = "hmacWithSHA1"  # the DEFAULT when the field is absent
        for tag, value in params[2:]:
            if tag == 0x30:
                prf_oid = _oid_text(_items(value)[0][1])
                out["prf"] = PRF_NAMES.get(prf_oid, prf_oid)
    elif kdf_oid == OID_SCRYPT:
        out["kdf"] = "scrypt"
    else:
        out["kdf"] = kdf_oid
    cipher_oid = _oid_text(_items(cipher)[0][1])
    out["cipher"] = CIPHER_NAMES.get(cipher_oid, cipher_oid)
    return out


def is_current(encryption, rounds=KDF_ROUNDS):
    """True when ``key_encryption()``'s result meets this collection's standard."""
    return (encryption.get("kdf") == "pbkdf2" and encryption.get("prf") == "hmacWithSHA256"
            and (encryption.get("iterations") or 0) >= rounds
            and encryption.get("cipher") == "aes-256-cbc")


def describe(encryption):
    """One line for warnings and diffs, e.g. ``PBES2 pbkdf2 hmacWithSHA256 600000 rounds aes-256-cbc``."""
    parts = [encryption.get("scheme"), encryption.get("kdf"), encryption.get("prf")]
    if encryption.get("iterations"):
        parts.append("%d rounds" % encryption["iterations"])
    parts.append(encryption.get("cipher"))
    return " ".join(str(part) for part in parts if part)
