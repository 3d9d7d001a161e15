# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SHA-512 crypt (``$6$``) through the system's libxcrypt.

Python 3.13 dropped the ``crypt`` module, and code that runs on the managed
host cannot pull a hashing library from PyPI. Every Debian ships libxcrypt
(``libcrypt.so.1``, the library PAM itself hashes with), so the hash is made
by the same code that ``pam_unix``, ``pam_userdb crypt=crypt`` and Dovecot's
``CRYPT`` scheme use to check it.

Private API (leading underscore): no Ansible import.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import ctypes.util
import hmac
import re
import secrets
import threading

SALT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SALT_LENGTH = 16
ROUNDS_MIN = 1000
ROUNDS_MAX = 999999999
# libxcrypt's struct crypt_data is 32768 bytes; twice that leaves room.
_CRYPT_DATA_SIZE = 65536

_SHA512_RE = re.compile(r"^\$6\$(rounds=[0-9]+\$)?[./0-9A-Za-z]{0,16}\$[./0-9A-Za-z]{86}$")

_lock = threading.Lock()
_lib = None


class CryptError(Exception):
    """Hashing is impossible here (no libcrypt) or the input is unusable."""


def _library():
    global _lib
    if _lib is None:
        names = ["libcrypt.so.1", ctypes.util.find_library("crypt")]
        errors = []
        for name in names:
            if not name:
                continue
            try:
                lib = ctypes.CDLL(name, use_errno=True)
            except OSError as exc:
                errors.append(str(exc))
                continue
            lib.crypt.restype = ctypes.c_char_p
            lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            if hasattr(lib, "crypt_rn"):
                lib.crypt_rn.restype = ctypes.c_char_p
                lib.crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
            _lib = lib
            break
        else:
            raise CryptError(
                "cannot load libcrypt (libxcrypt, package libcrypt1) to compute SHA-512 crypt: %s"
                % ("; ".join(errors) or "library not found"))
    return _lib


def _to_bytes(value, what):
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise CryptError("%s must be a string" % what)
    if b"\x00" in value:
        raise CryptError("%s must not contain a NUL character" % what)
    return value


def crypt(phrase, setting):
    """Return ``crypt(3)`` of ``phrase`` with ``setting`` (a salt or a full hash), as str.

    Raises CryptError when libcrypt refuses the setting (libxcrypt returns
    NULL or a failure token starting with ``*``).
    """
    phrase_b = _to_bytes(phrase, "the password")
    setting_b = _to_bytes(setting, "the salt")
    lib = _library()
    if hasattr(lib, "crypt_rn"):
        data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
        out = lib.crypt_rn(phrase_b, setting_b, data, _CRYPT_DATA_SIZE)
    else:  # older glibc libcrypt: static buffer, so serialise
        with _lock:
            out = lib.crypt(phrase_b, setting_b)
    if not out or out.startswith(b"*"):
        raise CryptError("libcrypt refused the setting %r" % setting_b.split(b"$")[:3])
    return out.decode("ascii")


def make_salt(length=SALT_LENGTH):
    """A random crypt salt from the 64-character crypt alphabet."""
    return "".join(secrets.choice(SALT_ALPHABET) for _position in range(length))


def sha512_crypt(password, salt=None, rounds=None):
    """Hash ``password`` as ``$6$[rounds=N$]salt$hash`` with a random salt by default."""
    if salt is None:
        salt = make_salt()
    if not salt or len(salt) > SALT_LENGTH or any(c not in SALT_ALPHABET for c in salt):
        raise CryptError("a SHA-512 crypt salt is 1 to 16 characters from [./0-9A-Za-z]")
    if rounds is None:
        setting = "$6$%s" % salt
    else:
        if not ROUNDS_MIN <= int(rounds) <= ROUNDS_MAX:
            raise CryptError("rounds must be between %d and %d" % (ROUNDS_MIN, ROUNDS_MAX))
        setting = "$6$rounds=%d$%s" % (int(rounds), salt)
    return crypt(password, setting)


def is_sha512_crypt(value):
    """True when ``value`` looks like a complete SHA-512 crypt string."""
    return isinstance(value, str) and bool(_SHA512_RE.match(value))


def verify(password, hashed):
    """True when ``password`` matches the crypt string ``hashed`` (compared in constant time)."""
    if not isinstance(hashed, str) or not hashed.startswith("$"):
        return False
    try:
        candidate = crypt(password, hashed)
    except CryptError:
        return False
    return hmac.compare_digest(candidate.encode("ascii"), hashed.encode("ascii", "replace"))
