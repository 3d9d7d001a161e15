"""The ca role's host mode: a ca user owns the CA, a systemd timer re-signs the CRL.

Runs the refresh service for real and checks the CRL it wrote with the
cryptography library on the controller (an independent reader of the files).
"""

import datetime
import time

from cryptography import x509

HOME = "/var/lib/hardened-ca"
CA_DIR = HOME + "/ca"
SERVICE = "hardened-ca-crl.service"
TIMER = "hardened-ca-crl.timer"


def read_crl(instance):
    pem = instance.run("cat", CA_DIR + "/crl.pem").stdout.encode()
    crl = x509.load_pem_x509_crl(pem)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return pem, crl, number


def journal_has(instance, text, tries=10):
    """journald may lag a little behind the unit's end; look a few times (bounded)."""
    for _ in range(tries):
        if text in instance.run("journalctl", "-u", SERVICE, "-n", "20", "--no-pager").stdout:
            return True
        time.sleep(0.5)
    return False


def ca_cert(instance):
    return x509.load_pem_x509_certificate(instance.run("cat", CA_DIR + "/ca.crt").stdout.encode())


def test_ca_user_and_private_files(instance):
    host = instance.host
    user = host.user("ca")
    assert user.exists and user.shell == "/usr/sbin/nologin"
    home = host.file(HOME)
    assert (home.user, home.group, home.mode) == ("ca", "ca", 0o700)
    folder = host.file(CA_DIR)
    assert (folder.user, folder.mode) == ("ca", 0o700)
    for name in ("ca.key", "ca.crt", "crl.pem", "index.sqlite3", "export/.state",
                 "export/postfix_relay_clientcerts", "export/dovecot_ca_crl.pem"):
        item = host.file(CA_DIR + "/" + name)
        assert (item.user, item.group, item.mode) == ("ca", "ca", 0o600), name
    secret = host.file(HOME + "/passphrase")
    assert (secret.user, secret.mode) == ("ca", 0o400)
    assert b"ENCRYPTED PRIVATE KEY" in host.file(CA_DIR + "/ca.key").content
    assert host.package("python3-cryptography").is_installed
    # no other user can read the CA (run a read as nobody)
    denied = instance.run("runuser", "-u", "nobody", "--", "cat", CA_DIR + "/ca.key", check=False)
    assert denied.returncode != 0


def test_ca_certificate_is_a_ca(instance):
    cert = ca_cert(instance)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "O=Molecule Test" in cert.subject.rfc4514_string()


def test_timer_is_enabled_and_active(instance):
    timer = instance.host.service(TIMER)
    assert timer.is_enabled and timer.is_running
    out = instance.run("systemctl", "show", TIMER, "-p", "NextElapseUSecRealtime", "-p", "Unit").stdout
    assert "Unit=" + SERVICE in out
    assert "NextElapseUSecRealtime=" in out and "NextElapseUSecRealtime=\n" not in out
    user = instance.run("systemctl", "show", SERVICE, "-p", "User", "--value").stdout.strip()
    assert user == "ca"


def check_service_refreshes_the_crl(instance):
    pem_before, crl_before, number_before = read_crl(instance)
    time.sleep(1.2)  # CRL times have one-second resolution
    instance.run("systemctl", "start", SERVICE)  # oneshot: returns when done
    result = instance.run("systemctl", "show", SERVICE, "-p", "Result", "--value").stdout.strip()
    assert result == "success"
    pem_after, crl_after, number_after = read_crl(instance)
    assert number_after == number_before + 1
    assert crl_after.next_update_utc > crl_before.next_update_utc
    assert crl_after.next_update_utc - crl_after.last_update_utc == datetime.timedelta(days=10)
    assert crl_after.is_signature_valid(ca_cert(instance).public_key())
    bundle = instance.run("cat", CA_DIR + "/export/dovecot_ca_crl.pem").stdout.encode()
    assert bundle == instance.run("cat", CA_DIR + "/ca.crt").stdout.encode() + pem_after
    for name in ("crl.pem", "index.sqlite3", "export/.state", "export/dovecot_ca_crl.pem"):
        item = instance.host.file(CA_DIR + "/" + name)
        assert (item.user, item.mode) == ("ca", 0o600), name
    assert journal_has(instance, "CRL %d signed" % number_after)


def check_wrong_passphrase_fails_and_keeps_the_crl(instance):
    """The unit, pointed at a wrong passphrase by a runtime drop-in, fails and writes nothing.

    A drop-in under /run (gone at reboot, removed below) leaves the real
    passphrase file alone, which other tests check at the same time.
    """
    wrong = "/run/hm-test-wrong-passphrase"
    dropin_dir = "/run/systemd/system/%s.d" % SERVICE
    exec_start = instance.run("systemctl", "show", SERVICE, "-p", "ExecStart", "--value").stdout
    argv = exec_start.split("argv[]=", 1)[1].split(" ;", 1)[0].split()
    argv[argv.index("--passphrase-file") + 1] = wrong
    pem_before, _crl, number_before = read_crl(instance)
    instance.run("sh", "-c", "umask 077 && printf %s not-the-passphrase > " + wrong)
    instance.run("chown", "ca:ca", wrong)
    instance.run("mkdir", "-p", dropin_dir)
    instance.run("sh", "-c", "cat > %s/hm-test.conf" % dropin_dir,
                 stdin="[Service]\nExecStart=\nExecStart=%s\n" % " ".join(argv))
    instance.run("systemctl", "daemon-reload")
    try:
        started = instance.run("systemctl", "start", SERVICE, check=False)
        result = instance.run("systemctl", "show", SERVICE, "-p", "Result", "--value").stdout.strip()
        logged = journal_has(instance, "CRL not refreshed: wrong passphrase")
    finally:
        instance.run("rm", "-rf", dropin_dir, wrong)
        instance.run("systemctl", "daemon-reload")
        instance.run("systemctl", "reset-failed", SERVICE, check=False)
    assert started.returncode != 0 and result == "exit-code"
    pem_after, _crl, number_after = read_crl(instance)
    assert (pem_after, number_after) == (pem_before, number_before)
    assert logged


def test_service_refreshes_the_crl_and_fails_safely(instance):
    """One test, so the two service runs never overlap (the verifier runs tests in parallel)."""
    check_service_refreshes_the_crl(instance)
    check_wrong_passphrase_fails_and_keeps_the_crl(instance)
    check_service_refreshes_the_crl(instance)  # and the unit works again without the drop-in

ISSUE_ON_HOST = r"""
import base64, json, sys, tempfile
sys.path.insert(0, "/usr/local/lib/hardened-mailhost-ca")
from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority
import cryptography
ca = CertificateAuthority(tempfile.mkdtemp() + "/ca", "scratch passphrase")
ca.init()
modern = ca.issue("ann@example.test", "Ann", "phone")
legacy = ca.issue("ann@example.test", "Ann", "old-phone", pkcs12_legacy=True)
ca.revoke(legacy.serial, reason="key_compromise")
out = {"version": cryptography.__version__}
for name, item in (("modern", modern), ("legacy", legacy)):
    out[name] = {"cert": item.cert_pem.decode(), "p12": base64.b64encode(item.pkcs12_bytes).decode(),
                 "password": item.pkcs12_password}
out["bundle"] = open(ca.dovecot_export_path).read()
print(json.dumps(out))
"""


def test_ca_code_issues_with_the_platform_cryptography(instance, tmp_path):
    """Debian 12 ships cryptography 38, Debian 13 43: issue, PKCS#12 and CRL on both."""
    import base64
    import json
    import subprocess

    from cryptography.hazmat.primitives.serialization import pkcs12

    result = json.loads(instance.run("runuser", "-u", "ca", "--", "python3", "-c", ISSUE_ON_HOST).stdout)
    major = int(result["version"].split(".")[0])
    assert major == {"debian12": 38, "debian13": 43}.get(instance.platform, major)
    for name in ("modern", "legacy"):
        key, cert, chain = pkcs12.load_key_and_certificates(
            base64.b64decode(result[name]["p12"]), result[name]["password"].encode())
        assert key is not None and len(chain) == 1
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(result["bundle"])
    for name, expect_ok in (("modern", True), ("legacy", False)):
        leaf = tmp_path / (name + ".pem")
        leaf.write_text(result[name]["cert"])
        proc = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(bundle), str(leaf)],
                              capture_output=True, text=True, timeout=30, check=False)
        assert (proc.returncode == 0) == expect_ok, proc.stdout + proc.stderr


KEY_ON_HOST = r"""
import json, shutil, sys, tempfile
sys.path.insert(0, "/usr/local/lib/hardened-mailhost-ca")
from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority, CAError
from cryptography.hazmat.primitives import serialization
out = {}
# 1. the role's CA, opened by the platform's cryptography with the timer's passphrase file
live = CertificateAuthority("/var/lib/hardened-ca/ca", open("/var/lib/hardened-ca/passphrase").read())
out["live_iterations"] = live.check()["key_encryption"]["iterations"]
out["live_warnings"] = live.warnings
# 2. a CA as an earlier version wrote it (BestAvailableEncryption, 9-character passphrase)
folder = tempfile.mkdtemp() + "/old"
CertificateAuthority(folder, "long enough scratch passphrase").init()
key = serialization.load_pem_private_key(open(folder + "/ca.key", "rb").read(), b"long enough scratch passphrase")
open(folder + "/ca.key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"old-pass9")))
old = CertificateAuthority(folder, "old-pass9")
out["old_issues"] = bool(old.issue("ann@example.test", "Ann", "phone").serial)
out["old_warnings"] = old.warnings
out["old_before"] = old.key_encryption()["iterations"]
out["rekeyed"] = CertificateAuthority(folder, "old-pass9").rekey(new_passphrase="a new scratch passphrase")["changed"]
try:
    CertificateAuthority(folder, "old-pass9").check()
    out["old_still_opens"] = True
except CAError:
    out["old_still_opens"] = False
renewed = CertificateAuthority(folder, "a new scratch passphrase")
out["new_issues"] = bool(renewed.issue("bob@example.test", "Bob", "phone").serial)
out["new_iterations"] = renewed.key_encryption()["iterations"]
out["folder"] = folder
print(json.dumps(out))
"""


def test_key_at_rest_with_the_platform_cryptography(instance):
    """600,000-round PBES2 keys load with cryptography 38 (Debian 12) and 43 (Debian 13);
    an old 2,048-round key still issues there and is re-encrypted."""
    asn1 = instance.run("openssl", "asn1parse", "-in", CA_DIR + "/ca.key").stdout  # the host's OpenSSL
    assert ":PBES2" in asn1 and ":PBKDF2" in asn1 and ":hmacWithSHA256" in asn1 and ":aes-256-cbc" in asn1
    assert "INTEGER           :0927C0" in asn1  # 600,000
    import json
    result = json.loads(instance.run("runuser", "-u", "ca", "--", "python3", "-c", KEY_ON_HOST).stdout)
    try:
        assert result["live_iterations"] == 600000 and result["live_warnings"] == []
        assert result["old_issues"] and result["old_before"] == 2048
        assert any("2048 rounds" in w for w in result["old_warnings"])
        assert any("fewer than 16 characters" in w for w in result["old_warnings"])
        assert result["rekeyed"] and not result["old_still_opens"]
        assert result["new_issues"] and result["new_iterations"] == 600000
        old_key = instance.run("openssl", "asn1parse", "-in", result["folder"] + "/ca.key").stdout
        assert "INTEGER           :0927C0" in old_key
    finally:
        instance.run("rm", "-rf", result["folder"].rsplit("/", 1)[0])
