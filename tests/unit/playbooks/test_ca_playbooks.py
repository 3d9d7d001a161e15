"""issue_cert.yml, revoke_cert.yml and refresh_crl.yml run for real on the controller.

ansible-playbook runs against the implicit localhost with a CA in a temporary
folder; the group mailhosts is empty, so the push plays match no host (their
tasks are exercised by the Postfix and Dovecot scenarios).
"""

import json
import os
import re
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PASS = "playbook test passphrase"


def ca_dir_of(tmp_path):
    return tmp_path / "home" / ".hardened-mailhost" / "ca"


def playbook(tmp_path, name, **extra):
    extra_vars = dict(hardened_ca_dir=str(ca_dir_of(tmp_path)), hardened_ca_passphrase=PASS)
    extra_vars.update(extra)
    env = dict(os.environ,
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    proc = subprocess.run(
        ["ansible-playbook", os.path.join(ROOT, "playbooks", name), "-e", json.dumps(extra_vars)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert PASS not in proc.stdout + proc.stderr
    return proc


def test_issue_revoke_refresh(tmp_path):
    cert = dict(cert_email="Ann@Example.org", cert_name="Ann Example", cert_device="phone",
                cert_bundle_keep_seconds=0)
    issued = playbook(tmp_path, "issue_cert.yml", **cert)
    ca_dir = ca_dir_of(tmp_path)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    bundle = tmp_path / "home" / ".hardened-mailhost" / "bundles" / "ann@example.org_phone.p12"
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    password = re.search(r"Password: (\S+?)'?$", issued.stdout, re.M).group(1)
    assert issued.stdout.count(password) == 1  # shown once, not in any other task output
    key, certificate, _chain = pkcs12.load_key_and_certificates(bundle.read_bytes(), password.encode())
    assert key is not None
    fingerprint = re.search(r"SHA-256 ([0-9A-F:]{95})", issued.stdout).group(1)
    postfix_map = ca_dir / "export" / "postfix_relay_clientcerts"
    assert postfix_map.read_text() == "%s ann@example.org\n" % fingerprint

    # same device again: clear message, nothing changed
    index_before = (ca_dir / "index.json").read_bytes()
    bundle.unlink()
    again = playbook(tmp_path, "issue_cert.yml", **cert)
    assert again.returncode != 0
    assert "already has a valid certificate" in again.stdout
    assert (ca_dir / "index.json").read_bytes() == index_before and not bundle.exists()

    # bad device label
    bad_request = dict(cert)
    bad_request["cert_device"] = "my phone"
    bad = playbook(tmp_path, "issue_cert.yml", **bad_request)
    assert bad.returncode != 0 and "device label" in bad.stdout

    # revoke by e-mail + device: gone from the Postfix map, listed in the CRL
    revoked = playbook(tmp_path, "revoke_cert.yml", cert_email="ann@example.org",
                       cert_device="phone", cert_reason="key_compromise")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert "Revoked: " in revoked.stdout
    assert postfix_map.read_text() == ""
    crl_text = subprocess.run(["openssl", "crl", "-in", str(ca_dir / "crl.pem"), "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout
    assert "Key Compromise" in crl_text
    unknown = playbook(tmp_path, "revoke_cert.yml", cert_serial="ABCDEF12")
    assert unknown.returncode != 0 and "unknown to the CA" in unknown.stdout

    number = int(re.search(r"X509v3 CRL Number: *\n *(\d+)", crl_text).group(1))
    refreshed = playbook(tmp_path, "refresh_crl.yml")
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert "CRL %d valid until" % (number + 1) in refreshed.stdout


def test_bundle_removed_after_keep_time_and_on_request(tmp_path):
    cert = dict(cert_email="bob@example.org", cert_name="Bob", cert_device="laptop")
    timed = playbook(tmp_path, "issue_cert.yml", cert_bundle_keep_seconds=1,
                     cert_legacy_pkcs12=True, **cert)
    assert timed.returncode == 0, timed.stdout + timed.stderr
    bundles = tmp_path / "home" / ".hardened-mailhost" / "bundles"
    assert "legacy 3DES" in timed.stdout and os.listdir(str(bundles)) == []
    kept = playbook(tmp_path, "issue_cert.yml", cert_bundle_keep_seconds=0,
                    cert_replace=True, **cert)
    assert kept.returncode == 0 and "Replaced (revoked): " in kept.stdout
    assert os.listdir(str(bundles)) == ["bob@example.org_laptop.p12"]
    removed = playbook(tmp_path, "issue_cert.yml", cert_bundle_remove=True,
                       cert_email="bob@example.org", cert_device="laptop")
    assert removed.returncode == 0 and os.listdir(str(bundles)) == []


@pytest.mark.parametrize("name,extra,message", [
    ("issue_cert.yml", dict(cert_email="a@example.org"), "Give cert_email, cert_name and cert_device"),
    ("revoke_cert.yml", dict(), "Give either cert_serial"),
    ("refresh_crl.yml", dict(hardened_ca_passphrase=""), "Give the CA passphrase"),
])
def test_playbooks_refuse_incomplete_requests(tmp_path, name, extra, message):
    proc = playbook(tmp_path, name, **extra)
    assert proc.returncode != 0 and message in proc.stdout
    assert not ca_dir_of(tmp_path).exists()
