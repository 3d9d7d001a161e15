#!/usr/bin/env python3
"""Make the postfix scenario's CAs and client certificates (controller side).

Usage: make_certs.py EPHEMERAL_DIR

Uses the collection's CA API (module_utils/_ca.py), no second CA code:
``ca/`` is "our" CA (its export feeds the role), ``foreign-ca/`` another CA.
Client certificate PEM files land in ``clients/<name>.crt|.key`` (0600).
Idempotent: existing CAs and client files are kept.
"""

import datetime
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, ".collections"))

from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority  # noqa: E402
from ansible_collections.hardened.mailhost.plugins.module_utils._fileutil import atomic_write  # noqa: E402

PASSPHRASE = "molecule-postfix-test-ca"  # test-only CA in a throw-away folder


def open_ca(path):
    ca = CertificateAuthority(path, PASSPHRASE)
    if not ca.exists():
        ca.init(common_name="postfix scenario %s" % os.path.basename(path))
    return ca


def save(clients, name, issued):
    atomic_write(os.path.join(clients, name + ".crt"), issued.cert_pem, mode=0o600)
    atomic_write(os.path.join(clients, name + ".key"), issued.key_pem, mode=0o600)


def main(eph):
    ours = open_ca(os.path.join(eph, "ca"))
    foreign = open_ca(os.path.join(eph, "foreign-ca"))
    clients = os.path.join(eph, "clients")
    os.makedirs(clients, mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    wanted = {
        "alice-laptop": lambda: ours.issue("alice@example.test", "Alice", "laptop"),
        "bob-phone": lambda: ours.issue("bob@example.test", "Bob", "phone"),
        "alice-expired": lambda: ours.issue(
            "alice@example.test", "Alice", "old-laptop",
            not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)),
        "alice-foreign": lambda: foreign.issue("alice@example.test", "Alice", "laptop"),
        # The sender guard's tests (test_sender_guard.py): two devices of one user.
        "carol-phone": lambda: ours.issue("carol@example.test", "Carol", "phone"),
        "carol-tablet": lambda: ours.issue("carol@example.test", "Carol", "tablet"),
    }
    made = []
    for name, issue in wanted.items():
        if not os.path.exists(os.path.join(clients, name + ".crt")):
            save(clients, name, issue())
            made.append(name)
    print("made: %s" % (", ".join(made) or "nothing"))


if __name__ == "__main__":
    main(sys.argv[1])
