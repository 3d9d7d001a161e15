# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private certificate authority for per-device mail client certificates.

Private API (leading underscore): plain Python on top of ``cryptography``, no
Ansible import, no ``openssl`` subprocess. The modules ``client_ca``,
``client_cert``, ``client_crl`` and ``client_ca_info`` wrap it; the host-mode
CRL timer, the benchmark and test helpers import it directly.

Quick use::

    from ansible_collections.hardened.mailhost.plugins.module_utils._ca import (
        CertificateAuthority, CAError)

    ca = CertificateAuthority("/path/to/ca", "vault passphrase")
    ca.init()                                   # once; CAExistsError if present
    cert = ca.issue("ann@example.org", "Ann Example", "phone")
    cert.pkcs12_bytes, cert.pkcs12_password     # hand to the device, show once
    ca.issue_many([{"email": ..., "name": ..., "device": ...}, ...])  # all or none
    ca.revoke(cert.serial, reason="key_compromise")   # or ("ann@...", "phone")
    ca.crl(next_update_days=30)                 # re-sign the CRL, refresh exports
    ca.info()                                   # dict: CA, CRL, every certificate
    ca.rekey(new_passphrase="...")              # re-encrypt the key (current KDF)
    ca.warnings                                 # e.g. an old key encryption, after a load

Test helpers may pass ``days`` <= 0 or ``not_before``/``not_after``
(timezone-aware ``datetime``) to ``issue`` and ``init`` to make expired or
not-yet-valid certificates, and ``init`` a second CA folder for a "foreign" CA.

Layout of the CA folder (0700; every file 0600, written atomically):

``ca.key``
    CA private key, PKCS#8 PEM encrypted with the passphrase: PBES2 with
    PBKDF2-HMAC-SHA256 at ``KEY_KDF_ROUNDS`` (600,000) rounds and AES-256-CBC
    (see ``_ca_keyfile``). Keys of older versions (2,048 rounds) still open,
    with a warning, and ``rekey()`` re-encrypts them.
``ca.crt``
    self-signed CA certificate, PEM.
``crl.pem``
    current CRL, PEM (created by ``init``, re-signed by ``revoke``/``crl``).
``index.sqlite3``
    the index (SQLite, see ``_ca_index`` for why): CRL number, CRL validity,
    one row per certificate. A CA of an earlier version has ``index.json``;
    the first change converts it and keeps it as ``index.json.migrated``.
``export/postfix_relay_clientcerts``
    ``<SHA-256 fingerprint, AA:BB:..> <email>`` per currently valid
    certificate, sorted; source for a Postfix ``relay_clientcerts`` map.
``export/dovecot_ca_crl.pem``
    CA certificate PEM followed by the current CRL PEM, for Dovecot.
``export/.state``
    the index generation both exports follow (see ``_ca_exports``).

Every change happens under an exclusive lock on ``.lock`` in the folder, in
this order: one SQLite transaction (the records, the CRL number, the
generation), then the CRL, then the exports, then ``export/.state``. A process
killed at any point leaves the index before or after the change; the derived
files it had not written yet are brought in step by the next change (or
``client_crl``), which finds ``export/.state`` behind the index. An issue or
revoke touches the rows it needs through indexes and edits one line of the
Postfix map, so its cost does not grow with the number of records; only the
CRL (every revoked serial, by its nature) and a rebuild after an expiry read
more. Errors are :class:`CAError` with a message an operator can act on;
nothing is written when one is raised.

``CertificateAuthority`` decides (validation, locking, issuing, revoking,
re-keying); the parts it composes live beside it: ``_ca_index`` (the index
file), ``_ca_crl`` (signing and reading the CRL), ``_ca_exports`` (the Postfix
and Dovecot files), ``_ca_keyfile`` (the key at rest) and ``_ca_common``
(errors, times, serials). Programs shipped to a host need all of them next to
``_fileutil`` (the ca role's host mode copies them).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import datetime
import os
import re
import secrets

from ansible_collections.hardened.mailhost.plugins.module_utils import (
    _ca_crl,
    _ca_exports,
    _ca_index,
    _ca_keyfile,
    _fileutil,
)
# Re-exported: callers import these from _ca.
from ansible_collections.hardened.mailhost.plugins.module_utils._ca_common import (  # noqa: F401 pylint: disable=unused-import
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    CAError,
    CAExistsError,
    CAPassphraseError,
    aware,
    cert_not_after,
    cert_not_before,
    check_crl_days,
    fingerprint_of,
    hash_for,
    iso,
    key_type_of_public,
    make_private_dir,
    parse_serial,
    parse_time,
    public_der,
    serial_hex,
    utcnow,
)
from ansible_collections.hardened.mailhost.plugins.module_utils._ca_exports import (  # noqa: F401 pylint: disable=unused-import
    DOVECOT_EXPORT,
    EXPORT_DIR,
    POSTFIX_EXPORT,
)
from ansible_collections.hardened.mailhost.plugins.module_utils._ca_index import (  # noqa: F401 pylint: disable=unused-import
    INDEX_FILE,
    INDEX_FORMAT,
    LEGACY_BACKUP,
    LEGACY_FILE,
)

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:  # HAS_CRYPTOGRAPHY (from _ca_common) says so
    pass


CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CRL_FILE = "crl.pem"
LOCK_FILE = ".lock"

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
CA_KEY_TYPES = ("ec-p256", "ec-p384", "rsa-3072", "rsa-4096")
REVOCATION_REASONS = (
    "unspecified",
    "key_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
)
DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@" + _LABEL + r"(?:\." + _LABEL + r")+$"
)
# A new CA's passphrase: 16 characters resist an offline attack on a stolen
# key file even at a few bits of entropy per character. Existing CAs with a
# shorter one still open (with a warning) until they are re-encrypted.
MIN_PASSPHRASE = 16
KEY_KDF_ROUNDS = _ca_keyfile.KDF_ROUNDS
PKCS12_KDF_ROUNDS = 2048
# A certificate is only backdated this much, to absorb small clock skew.
BACKDATE = datetime.timedelta(minutes=5)

IssuedCert = collections.namedtuple(
    "IssuedCert",
    [
        "serial",           # uppercase hex string, as in the index ("4F0A...")
        "fingerprint",      # SHA-256, uppercase hex with colons (Postfix form)
        "cert_pem",         # bytes
        "key_pem",          # bytes, unencrypted PKCS#8: treat as a secret
        "pkcs12_bytes",     # bytes, encrypted with pkcs12_password
        "pkcs12_password",  # str, random; show once
        "serial_number",    # int, as cryptography's Certificate.serial_number
        "record",           # dict, the index record (no secrets)
        "replaced",         # list of index records revoked as superseded
    ],
)


def validate_email(email):
    if not isinstance(email, str) or not email:
        raise CAError("e-mail address is required")
    if len(email) > 254 or not EMAIL_RE.fullmatch(email):
        raise CAError("%r is not a valid e-mail address (ASCII local@domain.tld expected)" % (email,))
    return email.lower()


def validate_device(device):
    if not isinstance(device, str) or not DEVICE_RE.fullmatch(device):
        raise CAError(
            "device label %r is invalid: use 1-64 characters, letters, digits, '.', '_' "
            "or '-', starting with a letter or digit" % (device,))
    return device


def validate_name(name):
    if not isinstance(name, str) or not name.strip():
        raise CAError("the person's name (certificate O) is required")
    if len(name) > 64:
        raise CAError("name %r is longer than 64 characters (X.509 limit for O)" % (name,))
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise CAError("name %r contains control characters" % (name,))
    return name.strip()


def validate_domains(domains):
    """The served mail domains as a sorted list of lower-case names (``None`` stays ``None``)."""
    if domains is None:
        return None
    if isinstance(domains, str) or not isinstance(domains, (list, tuple, set)):
        raise CAError("the mail domains must be a list of domain names, got %r" % (domains,))
    out = set()
    for domain in domains:
        if not isinstance(domain, str) or not EMAIL_RE.fullmatch("x@" + domain):
            raise CAError("%r in the mail domains is not a domain name (ASCII, like example.org)" % (domain,))
        out.add(domain.lower())
    return sorted(out)


def check_identity(email, allowed_domains=None, relay_only=False):
    """Refuse an address outside the served domains unless it is a relay-only identity.

    A certificate's identity is its whole address. ``allowed_domains`` is
    the list of mail domains this host serves (``None``: not known, nothing
    is checked). An address of another domain is only accepted with
    ``relay_only`` (it may relay through Postfix, never open a mailbox);
    ``relay_only`` for a served domain is refused, because Dovecot would
    still open that mailbox.
    """
    domains = validate_domains(allowed_domains)
    domain = email.rsplit("@", 1)[1].lower()
    if domains is None:
        if relay_only:
            raise CAError("relay_only needs the list of served mail domains (allowed_domains / "
                          "hardened_mailhost_mail_domains) to prove %s is outside them; nothing was issued" % email)
        return
    served = domain in domains
    if served and relay_only:
        raise CAError("%s is in a served mail domain (%s): its certificate opens that mailbox, so it cannot "
                      "be marked relay-only; issue it without relay_only" % (email, domain))
    if not served and not relay_only:
        raise CAError("%s is outside the mail domains this host serves (%s); nothing was issued. If the "
                      "device only relays mail for that address, mark it relay-only (relay_only: true, "
                      "playbook -e cert_relay_only=true): such a certificate never opens a mailbox"
                      % (email, ", ".join(domains) or "none"))


def _generate_key(key_type):
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-") and key_type in KEY_TYPES:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise CAError("unknown key type %r; choose one of %s" % (key_type, ", ".join(KEY_TYPES)))


def pkcs12_encryption(password, legacy=False):
    """Modern (AES-256-CBC, PBKDF2-SHA256, HMAC-SHA256) or legacy (3DES, SHA-1) PKCS#12.

    Both use 2048 KDF iterations, OpenSSL's own ``pkcs12 -export`` default:
    the password is 144 random bits, so key stretching would add no strength.
    """
    builder = serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(PKCS12_KDF_ROUNDS)
    if legacy:
        builder = builder.key_cert_algorithm(
            pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(hashes.SHA1())
    else:
        builder = builder.key_cert_algorithm(
            pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256())
    return builder.build(password.encode("ascii"))


def _entry_label(number, req):
    if isinstance(req, dict):
        return "entry %d (%s / %s)" % (number, req.get("email"), req.get("device"))
    return "entry %d" % number


class CertificateAuthority:
    """The CA stored in ``ca_dir``.

    ``passphrase`` decrypts ``ca.key``; it may be ``None`` for read-only use
    (``info``, ``export_*``, ``plan_*``). The decrypted key is kept in memory
    for the life of the object, so issuing many certificates pays the key
    derivation once.

    Methods that change state: ``init``, ``issue``, ``revoke``, ``crl``
    (each refreshes both exports). Read-only: ``exists``, ``info``,
    ``certificate``, ``crl_status``, ``plan_issue``, ``plan_revoke``.
    """

    def __init__(self, ca_dir, passphrase=None):
        if not HAS_CRYPTOGRAPHY:
            raise CAError("the Python library 'cryptography' is required: %s" % CRYPTOGRAPHY_IMPORT_ERROR)
        self.ca_dir = os.path.abspath(os.path.expanduser(ca_dir))
        self.passphrase = passphrase
        self._key = None
        self._cert = None
        self._index = _ca_index.IndexStore(self.ca_dir)
        self._exports = _ca_exports.Exports(self.ca_dir, self.path(CA_CERT), self.path(CRL_FILE))
        self._key_loads = 0  # key derivations paid by this object (tests check it is 1)
        self.warnings = []  # operator-facing advice found while loading; no secrets

    # ---------------------------------------------------------------- paths
    def path(self, *parts):
        return os.path.join(self.ca_dir, *parts)

    @property
    def postfix_export_path(self):
        return self._exports.postfix_path

    @property
    def dovecot_export_path(self):
        return self._exports.dovecot_path

    def exists(self):
        """True when a CA (key or certificate) is present in the folder."""
        return os.path.exists(self.path(CA_KEY)) or os.path.exists(self.path(CA_CERT))

    # -------------------------------------------------------------- loading
    def _require_ca(self):
        missing = [name for name in (CA_KEY, CA_CERT) if not os.path.isfile(self.path(name))]
        if not self._index.exists():
            missing.append(INDEX_FILE)
        if len(missing) == 3:
            raise CAError("no CA in %s: create it first (hardened.mailhost.client_ca)" % self.ca_dir)
        if missing:
            raise CAError("the CA in %s is incomplete, missing %s; restore it from backup"
                          % (self.ca_dir, ", ".join(missing)))

    def certificate(self):
        """The CA certificate (cryptography object)."""
        if self._cert is None:
            self._require_ca()
            try:
                with open(self.path(CA_CERT), "rb") as handle:
                    self._cert = x509.load_pem_x509_certificate(handle.read())
            except ValueError as exc:
                raise CAError("CA certificate %s is corrupt: %s" % (self.path(CA_CERT), exc))
        return self._cert

    def _private_key(self):
        if self._key is not None:
            return self._key
        self._require_ca()
        if not self.passphrase:
            raise CAError("the CA passphrase is required for this operation")
        key, encryption = self._load_key(self.passphrase)
        self._key = key
        if not _ca_keyfile.is_current(encryption):
            self.warnings.append(
                "the CA key %s is encrypted with %s, weaker than this collection's standard "
                "(PBKDF2-HMAC-SHA256, %d rounds, AES-256-CBC): re-encrypt it with "
                "hardened.mailhost.client_ca rekey: true"
                % (self.path(CA_KEY), _ca_keyfile.describe(encryption), KEY_KDF_ROUNDS))
        if len(self.passphrase) < MIN_PASSPHRASE:
            self.warnings.append(
                "the CA passphrase has fewer than %d characters, too few against an offline attack on a "
                "copy of the key file: set a longer one with hardened.mailhost.client_ca rekey: true "
                "and new_passphrase" % MIN_PASSPHRASE)
        return key

    def _read_key_file(self):
        with open(self.path(CA_KEY), "rb") as handle:
            data = handle.read()
        try:
            encryption = _ca_keyfile.key_encryption(data)
        except (_ca_keyfile.KeyFileError, IndexError):
            raise CAError("CA key %s is corrupt or not encrypted (expected an encrypted PKCS#8 PEM)"
                          % self.path(CA_KEY))
        return data, encryption

    def _load_key(self, passphrase):
        """Decrypt ca.key with ``passphrase`` (one key derivation); (key, encryption parameters)."""
        data, encryption = self._read_key_file()
        self._key_loads += 1
        try:
            key = serialization.load_pem_private_key(data, password=passphrase.encode("utf-8"))
        except (ValueError, TypeError):
            raise CAPassphraseError("wrong passphrase for the CA key %s (or the key file is damaged)"
                                    % self.path(CA_KEY))
        if public_der(key) != public_der(self.certificate().public_key()):
            raise CAError("CA key %s does not belong to CA certificate %s"
                          % (self.path(CA_KEY), self.path(CA_CERT)))
        return key, encryption

    def key_encryption(self):
        """How ``ca.key`` is encrypted (``_ca_keyfile.key_encryption``) plus ``current`` (bool).

        Reads no secret and needs no passphrase; ``None`` when the file is unreadable.
        """
        try:
            _data, encryption = self._read_key_file()
        except (CAError, IOError, OSError):
            return None
        return dict(encryption, current=_ca_keyfile.is_current(encryption))

    def _signing_key(self, now=None):
        """The CA key, refusing when the CA certificate is no longer (or not yet) valid."""
        key = self._private_key()
        cert = self.certificate()
        now = now or utcnow()
        if cert_not_after(cert) <= now:
            raise CAError("the CA certificate expired on %s: create a new CA (and re-issue devices)"
                          % iso(cert_not_after(cert)))
        if cert_not_before(cert) > now:
            raise CAError("the CA certificate is not valid before %s: check the clock"
                          % iso(cert_not_before(cert)))
        return key

    def _reading(self):
        """The index for reads (no lock; SQLite shows committed data only)."""
        self._require_ca()
        return self._index.reading()

    def _recover(self, now, can_sign=True):
        """Bring the CRL and the exports in step with the index (caller holds the lock).

        Cheap when they are (one small file read). Otherwise a run was killed
        after its commit, the index was just migrated, or a listed certificate
        expired: re-sign the CRL if it is behind the index (with the key, when
        ``can_sign``), rebuild both exports from the index, drop temporary
        files a killed run left, and record the generation.
        """
        with self._reading() as idx:
            if self._exports.in_step(idx.generation, now):
                return False
            self._drop_stale_temporaries()
            status = _ca_crl.crl_status(self.path(CRL_FILE), idx.revoked_serials(),
                                        self.certificate().public_key(), now)
            behind = (not status["exists"] or status["corrupt"] or status["missing"]
                      or status["number"] != idx.crl_number or not status["signature_valid"])
            if behind:
                if not can_sign:
                    # The map alone can be fixed; the state stays behind for a keyed run.
                    return self._exports.write_postfix(idx, now)
                self._write_crl(idx, None, now, check_validity=False)
            return self._exports.rebuild(idx, now) or behind

    def _drop_stale_temporaries(self):
        for folder in (self.ca_dir, self._exports.folder):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if name.startswith((".ca.key.", ".ca.crt.", ".crl.pem.", ".index.sqlite3.",
                                    "." + POSTFIX_EXPORT + ".", "." + DOVECOT_EXPORT + ".",
                                    "." + _ca_exports.STATE_FILE + ".")):
                    try:
                        os.unlink(os.path.join(folder, name))
                    except OSError:
                        pass

    def _lock(self, creating=False):
        if not creating:
            self._require_ca()
        return _fileutil.locked(self.path(LOCK_FILE))

    # ---------------------------------------------------------------- init
    def init(self, key_type="ec-p256", common_name="hardened.mailhost client CA",
             organization=None, days=3650, crl_next_update_days=30,
             not_before=None, not_after=None):
        """Create the CA key, certificate, empty index, first CRL and exports.

        Raises :class:`CAExistsError` when the folder already holds a CA.
        Returns ``info()``.
        """
        if key_type not in CA_KEY_TYPES:
            raise CAError("unknown CA key type %r; choose one of %s" % (key_type, ", ".join(CA_KEY_TYPES)))
        if not self.passphrase or len(self.passphrase) < MIN_PASSPHRASE:
            raise CAError("the passphrase of a new CA must have at least %d characters (got %d); "
                          "nothing was created" % (MIN_PASSPHRASE, len(self.passphrase or "")))
        if not common_name or len(common_name) > 64:
            raise CAError("CA common name must have 1-64 characters")
        if organization is not None and (not organization or len(organization) > 64):
            raise CAError("CA organization must have 1-64 characters")
        check_crl_days(crl_next_update_days)
        if self.exists():
            raise CAExistsError("a CA already exists in %s" % self.ca_dir)
        now = utcnow()
        start = aware(not_before) if not_before else now - BACKDATE
        end = aware(not_after) if not_after else now + datetime.timedelta(days=days)
        if end <= start:
            raise CAError("CA validity must end after it starts (days=%r)" % (days,))

        make_private_dir(self.ca_dir)
        key = _generate_key(key_type)
        names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        subject = x509.Name(names)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hash_for(key))
        )
        key_pem = _ca_keyfile.encrypt_private_key(key, self.passphrase, KEY_KDF_ROUNDS)
        with self._lock(creating=True):
            if self.exists():
                raise CAExistsError("a CA already exists in %s" % self.ca_dir)
            _fileutil.atomic_write(self.path(CA_KEY), key_pem, mode=0o600)
            _fileutil.atomic_write(self.path(CA_CERT), cert.public_bytes(serialization.Encoding.PEM),
                                   mode=0o600)
            self._key, self._cert = key, cert
            self._index.create(crl_next_update_days)
            with self._index.reading() as idx:
                self._write_crl(idx, None, now, check_validity=False)
                self._exports.rebuild(idx, now)
        return self.info()

    # ---------------------------------------------------------------- issue
    @staticmethod
    def _is_current(rec, now):
        # The index's fixed-width UTC form sorts like the times it holds.
        return rec["state"] == "valid" and rec["not_after"] > iso(now)

    def plan_issue(self, email, name, device, replace=False, key_type="ec-p256", days=120,
                   not_before=None, not_after=None, now=None, allowed_domains=None, relay_only=False):
        """Validate an issue request without writing anything.

        Returns the index records that issuing would revoke as superseded
        (empty unless ``replace``); raises :class:`CAError` for bad input,
        a duplicate without ``replace``, an address outside
        ``allowed_domains`` (see ``check_identity``), or a CA that cannot sign.
        """
        with self._reading() as idx:
            return self._plan_issue(idx, email, name, device, replace, key_type, days,
                                    not_before, not_after, now or utcnow(), allowed_domains, relay_only)[0]

    def _plan_issue(self, idx, email, name, device, replace, key_type, days,
                    not_before, not_after, now, allowed_domains=None, relay_only=False):
        email = validate_email(email)
        device = validate_device(device)
        name = validate_name(name)
        check_identity(email, allowed_domains, relay_only)
        if key_type not in KEY_TYPES:
            raise CAError("unknown key type %r; choose one of %s" % (key_type, ", ".join(KEY_TYPES)))
        if isinstance(days, bool) or not isinstance(days, int):
            raise CAError("days must be an integer, got %r" % (days,))
        end = aware(not_after) if not_after else now + datetime.timedelta(days=days)
        start = aware(not_before) if not_before else min(now - BACKDATE, end - datetime.timedelta(days=1))
        if end <= start:
            raise CAError("certificate validity must end after it starts")
        self._signing_key(now)
        ca_end = cert_not_after(self.certificate())
        if end > ca_end:
            raise CAError("a %d-day certificate would outlive the CA (valid until %s): use fewer days "
                          "or create a new CA" % (days, iso(ca_end)))
        current = [rec for rec in idx.of_device(email, device) if self._is_current(rec, now)]
        if current and not replace:
            raise CAError(
                "%s already has a valid certificate for device %r (serial %s, expires %s); "
                "set replace: true to revoke it and issue a new one, or pick another device label"
                % (email, device, current[0]["serial"], current[0]["not_after"]))
        return current, (email, name, device, start, end)

    def issue(self, email, name, device, days=120, replace=False, key_type="ec-p256",
              pkcs12_legacy=False, not_before=None, not_after=None, allowed_domains=None,
              relay_only=False):
        """Issue a client certificate for (``email``, ``device``).

        Subject CN = e-mail, O = ``name``, OU = ``device``; SAN rfc822Name;
        EKU clientAuth; random serial; valid ``days`` (may be <= 0 for tests,
        or give aware datetimes ``not_before``/``not_after``). The device key
        is generated here and only returned, never stored.

        A still-valid certificate for the same (email, device) makes this fail
        unless ``replace``, which revokes it as superseded in the same locked
        step (and re-signs the CRL). ``allowed_domains`` and ``relay_only``:
        see ``check_identity``; the record carries ``relay_only``.
        Returns :class:`IssuedCert`.
        """
        now = utcnow()
        check_identity(validate_email(email), allowed_domains, relay_only)
        validate_device(device)
        validate_name(name)
        device_key = _generate_key(key_type)
        password = secrets.token_urlsafe(18)
        with self._lock():
            self._recover(now)
            with self._index.writing() as idx:
                issued = self._issue_in(idx, device_key, email, name, device, days, replace, key_type,
                                        not_before, not_after, allowed_domains, relay_only, now)
                if issued[3]:
                    idx.next_crl_number()
                idx.bump_generation()
            serial_number, cert, record, replaced = issued
            with self._index.reading() as idx:
                if replaced:
                    self._write_crl(idx, None, now)
                self._exports.update(idx, now, added=[record], removed=replaced, crl_changed=bool(replaced))
                replaced = [idx.find(r["serial"]) for r in replaced]
        p12 = pkcs12.serialize_key_and_certificates(
            device.encode("utf-8"), device_key, cert, [self.certificate()],
            pkcs12_encryption(password, pkcs12_legacy))
        return IssuedCert(
            serial=record["serial"],
            fingerprint=record["fingerprint_sha256"],
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=device_key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()),
            pkcs12_bytes=p12,
            pkcs12_password=password,
            serial_number=serial_number,
            record=dict(record),
            replaced=replaced,
        )

    @staticmethod
    def _check_batch(requests, allowed_domains, make_keys):
        """The checks of ``issue_many`` that need no index: [(label, request)]."""
        if not isinstance(requests, (list, tuple)) or not requests:
            raise CAError("give a non-empty list of certificates to issue")
        allowed = ("email", "name", "device", "days", "replace", "key_type", "pkcs12_legacy",
                   "relay_only", "not_before", "not_after")
        todo, seen = [], {}
        for number, req in enumerate(requests, 1):
            label = _entry_label(number, req)
            try:
                if not isinstance(req, dict):
                    raise CAError("expected a mapping with email, name and device")
                unknown = sorted(set(req) - set(allowed))
                if unknown:
                    raise CAError("unknown keys %s" % ", ".join(unknown))
                req = dict(req)
                req.setdefault("days", 120)
                req.setdefault("replace", False)
                req.setdefault("key_type", "ec-p256")
                req.setdefault("pkcs12_legacy", False)
                req.setdefault("relay_only", False)
                email = validate_email(req.get("email"))
                device = validate_device(req.get("device"))
                validate_name(req.get("name"))
                check_identity(email, allowed_domains, req["relay_only"])
                if (email, device) in seen:
                    raise CAError("the same e-mail and device as entry %d" % seen[(email, device)])
                seen[(email, device)] = number
                if make_keys:
                    req["device_key"] = _generate_key(req["key_type"])
                elif req["key_type"] not in KEY_TYPES:
                    raise CAError("unknown key type %r; choose one of %s" % (req["key_type"], ", ".join(KEY_TYPES)))
            except CAError as exc:
                raise CAError("%s: %s; nothing was issued" % (label, exc))
            todo.append((label, req))
        return todo

    def plan_issue_many(self, requests, allowed_domains=None, now=None):
        """Check a batch as ``issue_many`` would, writing nothing.

        Returns, per request, the records that issuing would revoke as
        superseded; raises :class:`CAError` naming the first bad entry.
        """
        now = now or utcnow()
        todo = self._check_batch(requests, allowed_domains, make_keys=False)
        out = []
        with self._reading() as idx:
            for label, req in todo:
                try:
                    out.append(self._plan_issue(idx, req["email"], req["name"], req["device"], req["replace"],
                                                req["key_type"], req["days"], req.get("not_before"),
                                                req.get("not_after"), now, allowed_domains, req["relay_only"])[0])
                except CAError as exc:
                    raise CAError("%s: %s; nothing was issued" % (label, exc))
        return out

    def issue_many(self, requests, allowed_domains=None):
        """Issue several certificates in one locked step: all of them, or none.

        ``requests`` is a list of dicts with the keywords of ``issue``
        (``email``, ``name``, ``device``; optional ``days``, ``replace``,
        ``key_type``, ``pkcs12_legacy``, ``relay_only``). Every entry is
        checked before anything is signed; the first bad one raises
        :class:`CAError` naming it (its position, e-mail and device) and
        nothing is issued for anyone. One transaction records them all, the
        CRL is signed once (when some replaced), and the exports are updated
        once. Returns the list of :class:`IssuedCert`, in request order.
        """
        now = utcnow()
        todo = self._check_batch(requests, allowed_domains, make_keys=True)
        results = []
        with self._lock():
            self._recover(now)
            with self._index.writing() as idx:
                for label, req in todo:
                    try:
                        results.append(self._issue_in(
                            idx, req["device_key"], req["email"], req["name"], req["device"], req["days"],
                            req["replace"], req["key_type"], req.get("not_before"), req.get("not_after"),
                            allowed_domains, req["relay_only"], now))
                    except CAError as exc:
                        raise CAError("%s: %s; nothing was issued" % (label, exc))
                if any(replaced for _serial, _cert, _record, replaced in results):
                    idx.next_crl_number()
                idx.bump_generation()
            added = [record for _serial, _cert, record, _replaced in results]
            removed = [old for _serial, _cert, _record, replaced in results for old in replaced]
            with self._index.reading() as idx:
                if removed:
                    self._write_crl(idx, None, now)
                self._exports.update(idx, now, added=added, removed=removed, crl_changed=bool(removed))
                removed = dict((old["serial"], idx.find(old["serial"])) for old in removed)
        ca_cert = self.certificate()
        out = []
        for (label, req), (serial_number, cert, record, replaced) in zip(todo, results):
            password = secrets.token_urlsafe(18)
            key = req["device_key"]
            out.append(IssuedCert(
                serial=record["serial"],
                fingerprint=record["fingerprint_sha256"],
                cert_pem=cert.public_bytes(serialization.Encoding.PEM),
                key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
                pkcs12_bytes=pkcs12.serialize_key_and_certificates(
                    record["device"].encode("utf-8"), key, cert, [ca_cert],
                    pkcs12_encryption(password, req["pkcs12_legacy"])),
                pkcs12_password=password,
                serial_number=serial_number,
                record=dict(record),
                replaced=[removed[old["serial"]] for old in replaced],
            ))
        return out

    def _issue_in(self, idx, device_key, email, name, device, days, replace, key_type,
                  not_before, not_after, allowed_domains, relay_only, now):
        """Plan, sign and record one certificate inside the open transaction ``idx``."""
        replaced, (email, name, device, start, end) = self._plan_issue(
            idx, email, name, device, replace, key_type, days, not_before, not_after, now,
            allowed_domains, relay_only)
        ca_key = self._signing_key(now)
        ca_cert = self.certificate()
        serial_number = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, email),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, device),
            ]))
            .issuer_name(ca_cert.subject)
            .public_key(device_key.public_key())
            .serial_number(serial_number)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(device_key, rsa.RSAPrivateKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(device_key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hash_for(ca_key))
        )
        record = {
            "serial": serial_hex(serial_number),
            "email": email,
            "name": name,
            "device": device,
            "subject": cert.subject.rfc4514_string(),
            "key_type": key_type,
            "issued_at": iso(now),
            "not_before": iso(start),
            "not_after": iso(end),
            "fingerprint_sha256": fingerprint_of(cert),
            "state": "valid",
            "revoked_at": None,
            "revocation_reason": None,
            "relay_only": bool(relay_only),
        }
        for old in replaced:
            idx.mark_revoked(old["serial"], "superseded", now)
        idx.insert(record)
        return serial_number, cert, record, replaced

    # --------------------------------------------------------------- revoke
    def plan_revoke(self, target, reason="unspecified", now=None):
        """Records that ``revoke(target)`` would revoke (empty when already done).

        ``target`` is a serial (int or hex string) or an ``(email, device)``
        pair. Raises :class:`CAError` for an unknown serial or device.
        """
        with self._reading() as idx:
            return self._plan_revoke(idx, target, reason, now or utcnow())

    def _plan_revoke(self, idx, target, reason, now):
        if reason not in REVOCATION_REASONS:
            raise CAError("unknown revocation reason %r; choose one of %s"
                          % (reason, ", ".join(REVOCATION_REASONS)))
        if isinstance(target, (tuple, list)):
            if len(target) != 2:
                raise CAError("revoke target must be a serial or an (email, device) pair")
            email, device = validate_email(target[0]), validate_device(target[1])
            matches = idx.of_device(email, device)
            if not matches:
                raise CAError("no certificate was ever issued to %s for device %r" % (email, device))
            return [dict(rec) for rec in matches if rec["state"] == "valid"]
        serial = parse_serial(target)
        rec = idx.find(serial)
        if rec is None:
            raise CAError("serial %s is unknown to the CA in %s" % (serial, self.ca_dir))
        return [] if rec["state"] == "revoked" else [rec]

    def revoke(self, target, reason="unspecified", next_update_days=None):
        """Revoke by serial or ``(email, device)`` (every unrevoked certificate of it).

        Re-signs the CRL and refreshes the exports when something changed.
        Returns the list of records revoked now (empty: nothing to do).
        """
        now = utcnow()
        with self._lock():
            self._recover(now)
            with self._index.writing() as idx:
                todo = self._plan_revoke(idx, target, reason, now)
                if not todo:
                    return []
                self._signing_key(now)
                for rec in todo:
                    idx.mark_revoked(rec["serial"], reason, now)
                idx.next_crl_number()
                idx.bump_generation()
            with self._index.reading() as idx:
                self._write_crl(idx, next_update_days, now)
                self._exports.update(idx, now, removed=todo, crl_changed=True)
                return [idx.find(rec["serial"]) for rec in todo]

    # ------------------------------------------------------------------ CRL
    def _write_crl(self, idx, next_update_days, now, check_validity=True):
        """Sign the CRL with the number the index holds (committed before, never reused)."""
        days = idx.crl_next_update_days if next_update_days is None else next_update_days
        check_crl_days(days)
        key = self._signing_key(now) if check_validity else self._private_key()
        return _ca_crl.sign_crl(self.path(CRL_FILE), idx.crl_number, idx.revoked(), key,
                                self.certificate(), days, now)

    def crl(self, next_update_days=None):
        """Re-sign the CRL now (next CRL number) and refresh both exports.

        ``next_update_days`` defaults to the CA's ``crl_next_update_days``.
        Returns ``crl_status()``.
        """
        now = utcnow()
        if next_update_days is not None:
            check_crl_days(next_update_days)
        with self._lock():
            self._signing_key(now)
            self._recover(now)
            with self._index.writing() as idx:
                idx.next_crl_number()
                idx.bump_generation()
            with self._index.reading() as idx:
                self._write_crl(idx, next_update_days, now)
                self._exports.update(idx, now, crl_changed=True)
        return self.crl_status()

    def load_crl(self):
        """The current CRL (cryptography object) or ``None`` when missing."""
        return _ca_crl.load_crl(self.path(CRL_FILE))

    def crl_status(self, now=None):
        """What the current CRL says and whether it matches the index (see ``_ca_crl.crl_status``)."""
        with self._reading() as idx:
            wanted = idx.revoked_serials()
        return _ca_crl.crl_status(self.path(CRL_FILE), wanted, self.certificate().public_key(),
                                  now or utcnow())

    # -------------------------------------------------------------- exports
    postfix_map_text = staticmethod(_ca_exports.postfix_map_text)

    def export_postfix_map(self):
        """(Re)write ``export/postfix_relay_clientcerts``; returns (path, changed).

        Certificates drop out of the map when revoked *or expired*, so run
        this (or ``crl()``) regularly; unchanged content is not rewritten.
        """
        with self._lock():
            with self._reading() as idx:
                return self.postfix_export_path, self._exports.write_postfix(idx)

    def export_dovecot_ca_crl(self):
        """(Re)write ``export/dovecot_ca_crl.pem``; returns (path, changed)."""
        with self._lock():
            self._require_ca()
            return self.dovecot_export_path, self._exports.write_dovecot()

    def refresh_exports(self):
        """Rewrite both exports when their content changed; returns changed."""
        now = utcnow()
        with self._lock():
            changed = self._recover(now, can_sign=bool(self.passphrase))
            with self._reading() as idx:
                changed = self._exports.write_postfix(idx, now) or changed
                return self._exports.write_dovecot() or changed

    def exports_current(self, now=None):
        """True when both export files hold what ``refresh_exports`` would write."""
        with self._reading() as idx:
            return self._exports.current(idx, now)

    # ----------------------------------------------------------------- info
    def check(self):
        """Open the key (with the passphrase), the certificate and the index.

        Raises :class:`CAError` when any of it is missing, damaged or the
        passphrase is wrong; returns ``ca_summary()``. The CRL is not checked
        here: it is derived data that ``crl()`` rewrites (see ``crl_status``).
        """
        self._private_key()
        with self._reading() as idx:
            idx.count()
        return self.ca_summary()

    def rekey(self, new_passphrase=None, check_only=False):
        """Re-encrypt ``ca.key`` with the current KDF, under ``new_passphrase`` when given.

        Returns a dict: ``changed``, ``passphrase_changed``, ``before`` and
        ``after`` (``key_encryption()``; ``after`` is what would be written in
        ``check_only``). Nothing is done when the key already has the current
        encryption and passphrase, and also when ``passphrase`` no longer
        opens it but ``new_passphrase`` does with the current encryption (an
        earlier run re-encrypted it), so a repeated run changes nothing.

        The new key file is read back with the new passphrase before it
        atomically replaces the old one, under the CA lock; from then on the
        old passphrase no longer opens it. Raises :class:`CAError` (nothing
        written) for a passphrase shorter than ``MIN_PASSPHRASE`` or one that
        opens nothing.
        """
        target = new_passphrase or self.passphrase
        if not target or len(target) < MIN_PASSPHRASE:
            raise CAError(
                "re-encrypting the CA key needs a passphrase of at least %d characters (%s has %d); "
                "nothing was changed" % (MIN_PASSPHRASE, "new_passphrase" if new_passphrase else
                                         "the current passphrase, give new_passphrase:", len(target or "")))
        with self._lock():
            before = self.key_encryption()
            try:
                key = self._private_key()
                opened_with = self.passphrase
            except CAPassphraseError:
                if not new_passphrase or new_passphrase == self.passphrase:
                    raise
                try:
                    key, _encryption = self._load_key(new_passphrase)
                except CAPassphraseError:
                    raise CAPassphraseError("neither the passphrase nor new_passphrase opens the CA key %s"
                                            % self.path(CA_KEY))
                opened_with = new_passphrase
            result = {"changed": False, "passphrase_changed": target != opened_with,
                      "before": before, "after": before}
            if before["current"] and not result["passphrase_changed"]:
                self._key, self.passphrase = key, target
                if opened_with == new_passphrase:
                    self.warnings = []
                return result
            result["changed"] = True
            result["after"] = {"scheme": "pbes2", "kdf": "pbkdf2", "iterations": KEY_KDF_ROUNDS,
                               "prf": "hmacWithSHA256", "cipher": "aes-256-cbc", "current": True}
            if check_only:
                return result
            pem = _ca_keyfile.encrypt_private_key(key, target, KEY_KDF_ROUNDS)
            try:
                readback = serialization.load_pem_private_key(pem, password=target.encode("utf-8"))
            except (ValueError, TypeError):
                readback = None
            if readback is None or public_der(readback) != public_der(key):
                raise CAError("the re-encrypted CA key did not read back; %s was left as it was"
                              % self.path(CA_KEY))
            _fileutil.atomic_write(self.path(CA_KEY), pem, mode=0o600)
            self._key, self.passphrase, self.warnings = key, target, []
            result["after"] = self.key_encryption()
            return result

    def ca_summary(self, now=None):
        now = now or utcnow()
        cert = self.certificate()
        end = cert_not_after(cert)
        return {
            "subject": cert.subject.rfc4514_string(),
            "serial": serial_hex(cert.serial_number),
            "not_before": iso(cert_not_before(cert)),
            "not_after": iso(end),
            "days_left": int((end - now).total_seconds() // 86400),
            "expired": end <= now,
            "fingerprint_sha256": fingerprint_of(cert),
            "key_type": key_type_of_public(cert.public_key()),
            "key_encryption": self.key_encryption(),
            "ca_dir": self.ca_dir,
        }

    def info(self, now=None):
        """Everything an operator wants to see; no secrets, no passphrase needed.

        ``certificates`` holds every index record plus ``status`` (valid,
        revoked, expired, not_yet_valid) and ``days_left`` (int, may be < 0).
        """
        now = now or utcnow()
        with self._reading() as idx:
            records = idx.all()
            next_days = idx.crl_next_update_days
        certs = []
        for rec in records:
            out = rec
            end = parse_time(rec["not_after"])
            out["days_left"] = int((end - now).total_seconds() // 86400)
            if rec["state"] == "revoked":
                out["status"] = "revoked"
            elif end <= now:
                out["status"] = "expired"
            elif parse_time(rec["not_before"]) > now:
                out["status"] = "not_yet_valid"
            else:
                out["status"] = "valid"
            certs.append(out)
        return {
            "ca": self.ca_summary(now),
            "crl": self.crl_status(now),
            "crl_next_update_days": next_days,
            "certificates": certs,
            "exports": {"postfix_relay_clientcerts": self.postfix_export_path,
                        "dovecot_ca_crl": self.dovecot_export_path},
        }
