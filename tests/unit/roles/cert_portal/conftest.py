"""Shared set-up for the cert_portal packages' tests: the role's files/ on the
path, a throwaway CA (made once per session), fake PAM, mail and clock."""

import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.abspath(os.path.join(HERE, "..", "..", "..", "..", "roles", "cert_portal", "files"))
# The packages are copied to hosts file by file: keep __pycache__ out of the role.
sys.dont_write_bytecode = True
if FILES not in sys.path:
    sys.path.insert(0, FILES)

from ansible_collections.hardened.mailhost.plugins.module_utils import _ca  # noqa: E402
from hm_cert_helper import config  # noqa: E402
from hm_cert_helper.bundles import BundleStore  # noqa: E402
from hm_cert_helper.service import Helper  # noqa: E402

PASSPHRASE = "unit-test-portal-ca-passphrase"
PASSWORDS = {"alice": "alice-login-pw", "bob": "bob-login-pw", "carol": "carol-not-in-portal"}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Mailer:
    def __init__(self):
        self.codes = []     # (rcpt, code)
        self.reminders = []
        self.fail = False

    def send_code(self, rcpt, code, user, address, minutes):
        if self.fail:
            from hm_cert_helper.mailer import MailError
            raise MailError("connection refused")
        self.codes.append((rcpt, code))

    def send_reminder(self, rcpt, device, serial, not_after, days_left):
        self.reminders.append((rcpt, device, serial))


@pytest.fixture(scope="session")
def ca_template(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("ca") / "ca")
    _ca.CertificateAuthority(folder, PASSPHRASE).init(common_name="Portal Test CA")
    return folder


def settings(**extra):
    raw = {
        "mail_domains": ["example.test"],
        "users": {
            "alice": {"email": "alice@example.test", "name": "Alice Example", "notify": "alice@outside.example"},
            "bob": {"email": "bob@example.test", "name": "Bob Example", "notify": "bob@outside.example"},
        },
        "bundle_lifetime": 600,
    }
    raw.update(extra)
    return config.validate(raw, _ca.validate_email, _ca.check_identity)


@pytest.fixture()
def env(tmp_path, ca_template):
    """A helper over a fresh copy of the CA, with fakes; returns a namespace."""
    ca_dir = str(tmp_path / "ca")
    shutil.copytree(ca_template, ca_dir)
    bundle_dir = tmp_path / "bundles"
    bundle_dir.mkdir()
    clock, wall = Clock(), Clock()
    cfg = settings(ca_dir=ca_dir, bundle_dir=str(bundle_dir))
    mailer = Mailer()
    ca = _ca.CertificateAuthority(ca_dir, PASSPHRASE)
    bundles = BundleStore(str(bundle_dir), cfg["bundle_lifetime"], clock=wall)
    helper = Helper(cfg, lambda: ca, lambda u, p: PASSWORDS.get(u) == p, mailer, bundles,
                    clock=clock, ca_module=_ca)

    class Env:
        pass

    out = Env()
    out.__dict__.update(helper=helper, ca=ca, mailer=mailer, clock=clock, wall=wall, cfg=cfg,
                        bundle_dir=bundle_dir, ca_dir=ca_dir)
    return out


def login(env, user="alice", addr="192.0.2.10"):
    """Password and mailed code; returns the helper session token."""
    answer = env.helper.handle({"op": "login", "user": user, "password": PASSWORDS[user], "addr": addr})
    assert answer["ok"], answer
    code = env.mailer.codes[-1][1]
    answer = env.helper.handle({"op": "verify", "pending": answer["pending"], "code": code, "addr": addr})
    assert answer["ok"], answer
    return answer["session"]
