"""Dovecot: IMAPS with client certificates, app passwords, SASL and LMTP for Postfix.

Every check logs in from the host through the published port 993 with a real
client (imaplib over TLS), as Thunderbird or K-9 would. Certificates come from
the collection's CA (molecule/common/hmtest/pki.py, run in prepare).
"""

import email.message
import fcntl
import json
import os
import smtplib
import subprocess
import sys
import time
import uuid

import pytest

from hmtest import imap, mailbox
from hmtest.instances import load_instances

APP_FILE = "/etc/dovecot/app-passwords"
CA_FILE = "/etc/dovecot/client-ca-crl.pem"
SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


EXCLUSIVE_TESTS = ("test_ca_file_guard_and_revocation_through_the_ca_playbook",)


@pytest.fixture(autouse=True)
def _dovecot_reload_lock(request, ephemeral_dir):
    """The verifier runs tests side by side; a Dovecot reload (CA file pushed)
    drops logins in progress. The test that reloads runs alone: it takes this
    lock exclusively, every other test shares it."""
    mode = fcntl.LOCK_EX if request.node.originalname in EXCLUSIVE_TESTS else fcntl.LOCK_SH
    with open(os.path.join(ephemeral_dir, "dovecot-test.lock"), "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def pki(ephemeral_dir):
    return os.path.join(ephemeral_dir, "pki")


@pytest.fixture(scope="module")
def server_pem(instance):
    return instance.run("cat", "/etc/ssl/hardened-mailhost/server.crt").stdout


@pytest.fixture(scope="module")
def imaps(instance):
    return instance.port(993)


def ctx_for(pki, server_pem, name=None):
    if name is None:
        return imap.tls_context(server_pem)
    base = os.path.join(pki, "certs", name)
    return imap.tls_context(server_pem, base + ".crt", base + ".key")


def app_password(pki, instance, device):
    with open(os.path.join(pki, "app-%s-%s" % (instance.name, device)), encoding="utf-8") as handle:
        return handle.read().strip()


def app_password_module(instance, args):
    """Run hardened.mailhost.app_password ad hoc on one instance; returns its result."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    proc = subprocess.run(
        ["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], instance.name,
         "-m", "hardened.mailhost.app_password", "-a", args],
        capture_output=True, text=True, timeout=180, check=False, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"][instance.name]


def doveadm_auth(instance, user, password):
    """Authenticate on the socket Postfix uses for SASL (as smtpd would)."""
    return instance.run("doveadm", "auth", "test", "-a", "/var/spool/postfix/private/auth",
                        user, password, check=False)


# --------------------------------------------------------------- service shape

def test_only_imaps_listens(instance, imaps):
    host = instance.host
    assert host.service("dovecot").is_running
    assert host.socket("tcp://0.0.0.0:993").is_listening
    assert not host.socket("tcp://0.0.0.0:143").is_listening
    assert imap.port_open(imaps)


def test_postfix_sockets(instance):
    for path, mode in (("/var/spool/postfix/private/auth", 0o660),
                       ("/var/spool/postfix/private/dovecot-lmtp", 0o600)):
        sock = instance.host.file(path)
        assert sock.is_socket
        assert sock.user == "postfix" and sock.group == "postfix"
        assert sock.mode == mode


def test_config_is_ours_and_valid(instance):
    out = instance.run("doveconf", "-n").stdout
    assert "auth-system" not in out and "passdb pam" not in out and "driver = pam" not in out
    settings = [line for line in out.splitlines() if line and not line.startswith("#")]
    if instance.platform == "debian13":
        assert settings[0].startswith("dovecot_config_version = ")
    assert "require_crl = no" not in out  # CRL checking stays on (the default)
    assert "auth_allow_cleartext = yes" not in out and "disable_plaintext_auth = no" not in out
    ca = instance.host.file(CA_FILE)
    assert "BEGIN X509 CRL" in ca.content_string and "BEGIN CERTIFICATE" in ca.content_string


def test_app_password_file_holds_hashes_only(instance, pki):
    f = instance.host.file(APP_FILE)
    assert f.user == "root" and f.group == "dovecot" and f.mode == 0o640
    content = f.content_string
    assert "alice+phone:{SHA512-CRYPT}$6$" in content
    assert app_password(pki, instance, "phone") not in content


# ------------------------------------------------------- certificate logins

def test_valid_certificate_reads_mail_delivered_by_postfix(instance, pki, server_pem, imaps):
    token = uuid.uuid4().hex
    msg = email.message.EmailMessage()
    msg["From"] = "tester@example.net"
    msg["To"] = "alice@example.test"
    msg["Subject"] = "hm-dovecot %s" % token
    msg.set_content("body %s\n" % token)
    with smtplib.SMTP("127.0.0.1", instance.port(25), timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        smtp.send_message(msg, from_addr="", to_addrs=["alice@example.test"])

    raw = mailbox.wait_in_inbox(imaps, ctx_for(pki, server_pem, "alice-valid"), token, timeout=45)
    assert token.encode() in raw
    # Delivered by Dovecot's LMTP into the Maildir that IMAP reads.
    assert instance.run("sh", "-c", "grep -rl %s /home/alice/Maildir/new /home/alice/Maildir/cur" % token,
                        check=False).returncode == 0


def test_certificate_user_is_the_account(instance, pki, server_pem, imaps):
    """bob's certificate opens bob's mailbox, not alice's."""
    result = imap.login_external(imaps, ctx_for(pki, server_pem, "bob-valid"))
    assert result.ok, result
    result.close()
    # 2.3 logs "Login: user=<bob>", 2.4 "Logged in: user=<bob>".
    log = instance.run("sh", "-c", "journalctl -u dovecot --no-pager -n 50 | grep -E "
                       "'imap-login: (Login|Logged in): user=<bob>, method=EXTERNAL'", check=False)
    assert log.returncode == 0, log.stdout


@pytest.mark.parametrize("name", ["alice-expired", "alice-revoked", "alice-foreign"])
def test_bad_certificates_are_refused(pki, server_pem, imaps, name):
    result = imap.login_external(imaps, ctx_for(pki, server_pem, name))
    assert not result.ok, result


def test_no_certificate_is_refused(pki, server_pem, imaps):
    result = imap.login_external(imaps, ctx_for(pki, server_pem))
    assert not result.ok, result


def test_certificate_cannot_act_as_another_user(pki, server_pem, imaps):
    """EXTERNAL with an authorization identity (bob) on alice's certificate."""
    result = imap.login_external(imaps, ctx_for(pki, server_pem, "alice-valid"), authzid="bob")
    assert not result.ok, result


# ------------------------------------------------------------- passwords

def test_login_password_is_refused_with_and_without_certificate(pki, server_pem, imaps):
    for name in (None, "alice-valid"):
        result = imap.login_password(imaps, ctx_for(pki, server_pem, name), "alice", "Linux-Login-Pass-1")
        assert not result.ok, (name, result)


def imap_app_passwords(instance):
    """The converge lets IMAP use app passwords without a certificate on Debian 13 only."""
    return instance.platform == "debian13"


def test_app_password_on_imap(instance, pki, server_pem, imaps):
    right = app_password(pki, instance, "phone")
    without = imap.login_password(imaps, ctx_for(pki, server_pem), "alice+phone", right)
    if not imap_app_passwords(instance):
        # Certificate required: IMAP offers EXTERNAL only, the right password opens nothing.
        assert not without.ok, without
        with_cert = imap.login_password(imaps, ctx_for(pki, server_pem, "alice-valid"), "alice+phone", right)
        assert not with_cert.ok, with_cert
        return
    assert without.ok, without
    try:
        assert without.conn.select("INBOX")[0] == "OK"
    finally:
        without.close()
    for user, password in (("alice+phone", right + "x"), ("alice+laptop", right), ("alice", right),
                           ("bob+phone", right)):
        refused = imap.login_password(imaps, ctx_for(pki, server_pem), user, password)
        assert not refused.ok, (user, refused)


def test_app_password_on_the_postfix_sasl_socket(instance, pki):
    right = app_password(pki, instance, "phone")
    ok = doveadm_auth(instance, "alice+phone", right)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "user=alice" in ok.stdout  # Postfix sees the Linux account as SASL user
    assert doveadm_auth(instance, "alice+phone", right + "x").returncode != 0
    assert doveadm_auth(instance, "alice", "Linux-Login-Pass-1").returncode != 0


def test_removed_app_password_is_refused(instance, server_pem, imaps):
    made = app_password_module(instance, "user=alice device=tablet regenerate=true")
    assert made["changed"] and made["login"] == "alice+tablet"
    password = made["password"]
    # Dovecot looks at the file's mtime and size at most once a second: another
    # test's login in this same second may have just cached the old file.
    time.sleep(1.5)
    assert doveadm_auth(instance, "alice+tablet", password).returncode == 0
    if imap_app_passwords(instance):
        before = imap.login_password(imaps, imap.tls_context(server_pem), "alice+tablet", password)
        assert before.ok, before
        before.close()
    removed = app_password_module(instance, "user=alice device=tablet state=absent")
    assert removed["changed"] and "alice+tablet" not in [e["login"] for e in removed["entries"]]
    assert "alice+tablet" not in instance.host.file(APP_FILE).content_string
    # Dovecot looks at the file's mtime and size at most once a second.
    time.sleep(1.5)
    assert doveadm_auth(instance, "alice+tablet", password).returncode != 0
    after = imap.login_password(imaps, imap.tls_context(server_pem), "alice+tablet", password)
    assert not after.ok, after
    # The phone's password is untouched.
    assert "alice+phone" in [e["login"] for e in removed["entries"]]


# ------------------------------------------------- CA file: guard, revocation
# One test, so that nothing else replaces the live CA file while it runs
# (the verifier runs tests side by side).

GUARD_CASES = [
    ("crl-soon.pem", "next update at"),  # CRL valid for one more day, margin 7
    ("no-crl.pem", "and 0 CRL(s)"),
    ("foreign-crl.pem", "not issued by the CA"),
]


def playbook(*args, inventories=()):
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"]]
    for extra in inventories:
        argv += ["-i", extra]
    proc = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=600, check=False)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def _certificate_authority(pki):
    sys.path.insert(0, os.environ["ANSIBLE_COLLECTIONS_PATH"])
    from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority
    from hmtest.pki import PASSPHRASE
    return CertificateAuthority(os.path.join(pki, "ca"), PASSPHRASE), PASSPHRASE


def test_ca_file_guard_and_revocation_through_the_ca_playbook(pki, tmp_path):
    instances = load_instances()
    live = lambda: {i.name: i.run("sha256sum", CA_FILE).stdout for i in instances}  # noqa: E731

    # 1. The CRL guard refuses bad bundles and leaves the live file alone.
    before = live()
    for bundle, expected in GUARD_CASES:
        rc, out = playbook(os.path.join(SCENARIO_DIR, "crl_guard.yml"),
                           "-e", "dovecot_client_ca_src=%s" % os.path.join(pki, "bundles", bundle),
                           "-e", "dovecot_crl_min_valid_days=7")
        assert rc != 0, (bundle, out)
        assert "CRL guard" in out and expected in out and "Nothing was changed" in out, (bundle, out)
        assert live() == before, bundle

    # 2. The current export passes and changes nothing.
    rc, out = playbook(os.path.join(SCENARIO_DIR, "crl_guard.yml"),
                       "-e", "dovecot_client_ca_src=%s" % os.path.join(pki, "ca", "export", "dovecot_ca_crl.pem"))
    assert rc == 0 and "changed=0" in out and "failed=0" in out, out

    # 3. A new device certificate logs in; revoke_cert.yml revokes it, pushes
    #    the new CRL through this role, and Dovecot refuses it from then on.
    ca, passphrase = _certificate_authority(pki)
    issued = ca.issue("bob@example.test", "Bob", "ipad-%d" % int(time.time()))
    crt, key = tmp_path / "bob-ipad.crt", tmp_path / "bob-ipad.key"
    crt.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    servers = {i.name: (i, i.run("cat", "/etc/ssl/hardened-mailhost/server.crt").stdout) for i in instances}
    for inst, pem in servers.values():
        result = imap.login_external(inst.port(993), imap.tls_context(pem, str(crt), str(key)))
        assert result.ok, (inst.name, result)
        result.close()
    mailhosts = tmp_path / "mailhosts.yml"
    mailhosts.write_text("mailhosts:\n  children:\n    hm_targets:\n")
    vault = tmp_path / "vars.json"
    vault.write_text(json.dumps({"hardened_ca_passphrase": passphrase}))
    vault.chmod(0o600)
    rc, out = playbook(os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "revoke_cert.yml"),
                       "-e", "hardened_ca_dir=%s" % os.path.join(pki, "ca"), "-e", "@%s" % vault,
                       "-e", "cert_serial=%s" % issued.serial, "-e", "cert_reason=key_compromise",
                       inventories=[str(mailhosts)])
    assert rc == 0, out
    after = live()
    for inst, pem in servers.values():
        assert after[inst.name] != before[inst.name]
        refused = imap.login_external(inst.port(993), imap.tls_context(pem, str(crt), str(key)))
        assert not refused.ok, (inst.name, refused)
        still = imap.login_external(inst.port(993), ctx_for(pki, pem, "bob-valid"))
        assert still.ok, (inst.name, still)
        still.close()
