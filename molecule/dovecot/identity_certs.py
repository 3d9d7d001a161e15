"""Certificates from the scenario's own CA whose identity Dovecot must judge.

``python identity_certs.py PKI`` (PYTHONPATH: the collections folder and
molecule/common), run once on the controller by prepare_tasks.yml after
hmtest.pki made the CA. Writes ``PKI/certs/id-<case>.{crt,key}``:

- ``id-alice-other``: ``alice@other.example``, a domain the host does not
  serve (issued as a relay-only identity where the CA supports that).
- ``id-alice-sub``: ``alice@mail.example.test``, a sub-domain of a served one.
- ``id-bob-second``: ``bob@example.org``, the second served domain.
- ``id-alice-bare``: common name ``alice`` with no domain.
- ``id-alice-upper``: common name ``Alice@EXAMPLE.TEST`` (a served domain in
  capitals).
- ``id-alice-double``: common name ``alice@other.example@example.test``.

The first three go through ``CertificateAuthority.issue`` as the ca playbooks
would. The CA refuses the last three names (it lower-cases and checks every
address), yet the certificate check in Dovecot must not rely on that: they
are signed here with the same CA key, as another tool holding it could.
"""

import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority
from hmtest.pki import PASSPHRASE

SERVED = ["example.test", "example.org"]


def _write(path, data, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _save(pki, name, cert_pem, key_pem):
    base = os.path.join(pki, "certs", name)
    _write(base + ".crt", cert_pem, 0o644)
    _write(base + ".key", key_pem, 0o600)


def _issue(ca, email, name, device, relay_only=False):
    if relay_only:
        try:
            return ca.issue(email, name, device, allowed_domains=SERVED, relay_only=True)
        except TypeError:  # a CA without relay-only identities
            pass
    return ca.issue(email, name, device)


def _sign_raw(ca, common_name, device):
    """A client certificate with any common name, signed by the CA key."""
    ca_key = ca._signing_key()  # pylint: disable=protected-access
    ca_cert = ca.certificate()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, device),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def build(pki):
    marker = os.path.join(pki, "identity-done")
    if os.path.exists(marker):
        return
    ca = CertificateAuthority(os.path.join(pki, "ca"), PASSPHRASE)
    for name, (email, owner, device, relay_only) in {
            "id-alice-other": ("alice@other.example", "Alice", "partner", True),
            "id-alice-sub": ("alice@mail.example.test", "Alice", "subdomain", True),
            "id-bob-second": ("bob@example.org", "Bob", "second-domain", False)}.items():
        issued = _issue(ca, email, owner, device, relay_only)
        _save(pki, name, issued.cert_pem, issued.key_pem)
    for name, common_name in (("id-alice-bare", "alice"),
                              ("id-alice-upper", "Alice@EXAMPLE.TEST"),
                              ("id-alice-double", "alice@other.example@example.test")):
        _save(pki, name, *_sign_raw(ca, common_name, name))
    _write(marker, b"", 0o644)


if __name__ == "__main__":
    build(sys.argv[1])
