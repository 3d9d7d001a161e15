"""Test certificates made with the collection's own CA (module_utils._ca), on the controller.

``python -m hmtest.pki DEST [user ...]`` (PYTHONPATH: the collections folder and
molecule/common) makes, once, under DEST:

- ``ca/``: the CA folder (``export/dovecot_ca_crl.pem``, ``export/postfix_relay_clientcerts``)
- ``certs/<user>-valid.{crt,key}``: valid now (device ``laptop``)
- ``certs/<user>-expired.{crt,key}``: expired yesterday (device ``old``)
- ``certs/<user>-revoked.{crt,key}``: revoked, listed in the CRL (device ``stolen``)
- ``certs/<user>-foreign.{crt,key}``: valid, but from another CA (``foreign-ca/``)
- ``bundles/crl-soon.pem``: our CA + a CRL whose next update is one day away
- ``bundles/no-crl.pem``: our CA certificate without a CRL
- ``bundles/foreign-crl.pem``: our CA certificate + the foreign CA's CRL

Keys are written 0600; the folder is the scenario's ephemeral directory, never
the repository.
"""

import datetime
import os
import shutil
import sys

from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority

PASSPHRASE = "molecule-test-only-passphrase"  # throwaway CA in the scenario's scratch folder
DOMAIN = "example.test"


def _write(path, data, mode):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _save(dest, name, issued):
    _write(os.path.join(dest, "certs", name + ".crt"), issued.cert_pem, 0o644)
    _write(os.path.join(dest, "certs", name + ".key"), issued.key_pem, 0o600)


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def build(dest, users=("alice",), domain=DOMAIN):
    marker = os.path.join(dest, "done")
    if os.path.exists(marker):
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = CertificateAuthority(os.path.join(dest, "ca"), PASSPHRASE)
    ca.init(common_name="hardened.mailhost test CA", crl_next_update_days=30)
    foreign = CertificateAuthority(os.path.join(dest, "foreign-ca"), PASSPHRASE)
    foreign.init(common_name="hardened.mailhost test CA", organization="Someone else", crl_next_update_days=30)
    for user in users:
        email = "%s@%s" % (user, domain)
        _save(dest, user + "-valid", ca.issue(email, user.title(), "laptop"))
        _save(dest, user + "-expired", ca.issue(
            email, user.title(), "old",
            not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)))
        stolen = ca.issue(email, user.title(), "stolen")
        ca.revoke(stolen.serial, reason="key_compromise")
        _save(dest, user + "-revoked", stolen)
        _save(dest, user + "-foreign", foreign.issue(email, user.title(), "laptop"))
    ca.crl()

    # A copy of the CA whose CRL expires tomorrow, for the CRL guard.
    soon_dir = os.path.join(dest, "ca-soon")
    shutil.copytree(ca.ca_dir, soon_dir)
    soon = CertificateAuthority(soon_dir, PASSPHRASE)
    soon.crl(next_update_days=1)
    ca_pem = _read(ca.path("ca.crt"))
    _write(os.path.join(dest, "bundles", "crl-soon.pem"), _read(soon.dovecot_export_path), 0o644)
    _write(os.path.join(dest, "bundles", "no-crl.pem"), ca_pem, 0o644)
    _write(os.path.join(dest, "bundles", "foreign-crl.pem"), ca_pem + _read(foreign.path("crl.pem")), 0o644)
    _write(marker, b"", 0o644)


if __name__ == "__main__":
    build(sys.argv[1], tuple(sys.argv[2:]) or ("alice",))
