"""Dovecot: IMAPS with client certificates, app passwords, SASL and LMTP for Postfix.

Every check logs in from the host through the published port 993 with a real
client (imaplib over TLS), as Thunderbird or K-9 would. Certificates come from
the collection's CA (molecule/common/hmtest/pki.py and identity_certs.py, run
in prepare). The served mail domains are example.test and example.org
(molecule.yml).

The scenario verifies twice: tests marked ``both_phases`` run again after
side_effect.yml swapped the IMAP mode on both releases; the rest run in the
first verify only (``_phase_gate``).
"""

import email.message
import json
import os
import re
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


# Reloads Dovecot: runs alone (the lock in conftest.py).
EXCLUSIVE_TESTS = ("test_ca_file_guard_and_revocation_through_the_ca_playbook",)


PHASE_FILE = "/etc/hm-test-phase"  # written by side_effect.yml


def both_phases(test):
    """Run ``test`` in both verifies; it asks ``cert_required`` for the mode."""
    test.both_phases = True
    return test


_PHASES = {}  # instance name -> phase: it cannot change during one verify


def phase_of(instance):
    if instance.name not in _PHASES:
        marker = instance.run("cat", PHASE_FILE, check=False)
        _PHASES[instance.name] = marker.stdout.strip() if marker.returncode == 0 else "first"
    return _PHASES[instance.name]


def cert_required_mode(instance):
    """dovecot_imap_require_client_cert on ``instance`` in this verify: first Debian 12
    true and Debian 13 false (converge), then swapped (side_effect.yml)."""
    first = instance.platform != "debian13"
    return first if phase_of(instance) == "first" else not first


@pytest.fixture
def cert_required(instance):
    return cert_required_mode(instance)


@pytest.fixture(autouse=True)
def _phase_gate(request):
    if getattr(request.function, "both_phases", False):
        return
    if "instance" in request.fixturenames:
        instances = [request.getfixturevalue("instance")]
    else:  # a test over every instance at once
        instances = load_instances()
    if any(phase_of(instance) != "first" for instance in instances):
        pytest.skip("runs in the first verify only")


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


def owner_of_mailbox(result):
    """Whose mailbox a logged-in IMAP session shows (``owner_folders`` made the marker)."""
    typ, data = result.conn.list()
    assert typ == "OK", data
    owners = [user for user in ("alice", "bob") if any(b"hm-owner-" + user.encode() in line for line in data)]
    assert len(owners) == 1, data
    return owners[0]


@pytest.fixture(scope="module")
def owner_folders(instance):
    """One folder per account that names its owner, so a test can see whose mailbox it opened."""
    for user in ("alice", "bob"):
        instance.run("doveadm", "mailbox", "create", "-u", user, "hm-owner-" + user, check=False)
        assert "hm-owner-" + user in instance.run("doveadm", "mailbox", "list", "-u", user).stdout


SASL_SOCKET = "/var/spool/postfix/private/auth"

# Runs in the container: every (user, password) pair at once, so Dovecot's
# delay after each failed login is paid once, not once per pair.
_DOVEADM_MANY = """
import concurrent.futures, json, subprocess, sys
cases = json.load(sys.stdin)
def attempt(case):
    # As smtpd asks (service smtp), unless the case names another service.
    service = case[2] if len(case) > 2 else "smtp"
    proc = subprocess.run(["doveadm", "auth", "test", "-a", "%s", "-x", "service=" + service, case[0], case[1]],
                          capture_output=True, text=True)
    return [proc.returncode, proc.stdout + proc.stderr]
with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
    print(json.dumps(list(pool.map(attempt, cases))))
""" % SASL_SOCKET


def doveadm_auth(instance, user, password):
    """Authenticate on the socket Postfix uses for SASL (as smtpd would)."""
    return instance.run("doveadm", "auth", "test", "-a", SASL_SOCKET, user, password, check=False)


def doveadm_auth_many(instance, cases):
    """``doveadm_auth`` for each (user, password) side by side: [(returncode, output), ...]."""
    proc = instance.run("python3", "-c", _DOVEADM_MANY, stdin=json.dumps(cases))
    return [tuple(result) for result in json.loads(proc.stdout)]


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


def test_certificate_cannot_act_as_another_user(pki, server_pem, imaps):
    """EXTERNAL with an authorization identity (bob) on alice's certificate."""
    result = imap.login_external(imaps, ctx_for(pki, server_pem, "alice-valid"), authzid="bob")
    assert not result.ok, result


# ------------------------------------ identity: the whole address, served domains only

@pytest.mark.parametrize("name, owner", [
    ("alice-valid", "alice"),       # alice@example.test
    ("id-bob-second", "bob"),       # bob@example.org, the second served domain
    ("id-alice-upper", "alice"),    # Alice@EXAMPLE.TEST: compared in lower case
])
def test_certificate_in_a_served_domain_opens_its_account(pki, server_pem, imaps, owner_folders, name, owner):
    result = imap.login_external(imaps, ctx_for(pki, server_pem, name))
    assert result.ok, result
    try:
        assert owner_of_mailbox(result) == owner
    finally:
        result.close()


@pytest.mark.parametrize("name", [
    "id-alice-other",   # alice@other.example: the CA signed it (relay-only), the host does not serve it
    "id-alice-sub",     # alice@mail.example.test: a sub-domain is not a served domain
    "id-alice-bare",    # CN "alice", no domain
    "id-alice-double",  # alice@other.example@example.test
])
def test_certificate_outside_the_served_domains_is_refused(pki, server_pem, imaps, name):
    """The certificate is valid (CA, CRL, dates): the TLS handshake passes, the login does not."""
    result = imap.login_external(imaps, ctx_for(pki, server_pem, name))
    assert not result.ok, result
    assert result.stage == "auth", result


# ------------------------------------------------------------- passwords

@both_phases
def test_login_password_is_refused_with_and_without_certificate(pki, server_pem, imaps):
    for name in (None, "alice-valid"):
        result = imap.login_password(imaps, ctx_for(pki, server_pem, name), "alice", "Linux-Login-Pass-1")
        assert not result.ok, (name, result)


def capabilities(imaps, ctx):
    conn = imap.connect(imaps, ctx)
    try:
        return set(conn.capabilities)
    finally:
        conn.shutdown()


@both_phases
def test_imap_mode(instance, pki, server_pem, imaps, cert_required):
    """Certificate-required mode: IMAP offers EXTERNAL only and the right app password opens
    nothing. App-password mode: it opens the mailbox without a certificate (also as
    <login>@<served domain>), and a certificate still logs in with EXTERNAL."""
    right = app_password(pki, instance, "phone")
    offered = capabilities(imaps, ctx_for(pki, server_pem))
    assert "AUTH=EXTERNAL" in offered, offered
    with_cert = imap.login_external(imaps, ctx_for(pki, server_pem, "alice-valid"))
    assert with_cert.ok, with_cert
    with_cert.close()
    without_cert = imap.login_external(imaps, ctx_for(pki, server_pem))
    assert not without_cert.ok, without_cert
    if cert_required:
        # (Dovecot may still list PLAIN before login: the auth process advertises its global
        # mechanisms, and refuses them for IMAP.)
        for name in (None, "alice-valid"):
            refused = imap.login_password(imaps, ctx_for(pki, server_pem, name), "alice+phone", right)
            assert not refused.ok, (name, refused)
        return
    assert "AUTH=PLAIN" in offered and "LOGINDISABLED" not in offered, offered
    for login in ("alice+phone", "alice+phone@example.org"):
        ok = imap.login_password(imaps, ctx_for(pki, server_pem), login, right)
        assert ok.ok, (login, ok)
        try:
            assert ok.conn.select("INBOX")[0] == "OK"
        finally:
            ok.close()
    # Every failed login from the one test address slows the next (Dovecot's auth penalty):
    # the other wrong names are proven on the SASL socket, which has the same passdbs.
    for user, password in (("alice+phone", right + "x"), ("alice+phone@other.example", right)):
        refused = imap.login_password(imaps, ctx_for(pki, server_pem), user, password)
        assert not refused.ok, (user, refused)


def test_app_password_on_the_postfix_sasl_socket(instance, pki):
    """Postfix's view: <user>+<device> as before, or with a served domain, and the SASL user
    is the device's login (lower case, no domain), so Postfix can tell the devices apart;
    any other service continues as the Linux account. Refused: another domain, a wrong
    password or device, the Linux login password."""
    right = app_password(pki, instance, "phone")
    accepted = [[login, right] for login in ("alice+phone", "alice+phone@example.test",
                                             "ALICE+PHONE@Example.ORG")]
    others = [["alice+phone", right, service] for service in ("imap", "doveadm")]
    refused = [[login, right] for login in ("alice+phone@other.example", "alice+phone@mail.example.test",
                                            "alice+phone@example.test@other.example", "alice+laptop",
                                            "alice", "bob+phone")]
    refused += [["alice+phone", right + "x"], ["alice", "Linux-Login-Pass-1"]]
    results = doveadm_auth_many(instance, accepted + refused + others)
    for (login, _password), (returncode, output) in zip(accepted, results[:len(accepted)]):
        assert returncode == 0 and "auth succeeded" in output, (login, output)
        assert re.search(r"^\s*user=alice\+phone$", output, re.M), (login, output)  # the device
    for (login, _password), (returncode, output) in zip(refused, results[len(accepted):len(accepted) + len(refused)]):
        assert returncode != 0 and "auth failed" in output, (login, output)
    # IMAP (refused in certificate-required mode, without a certificate) and doveadm: never the device.
    for (_login, _password, service), (returncode, output) in zip(others, results[len(accepted) + len(refused):]):
        assert not re.search(r"^\s*user=alice\+phone$", output, re.M), (service, output)
        if returncode == 0:
            assert re.search(r"^\s*user=alice$", output, re.M), (service, output)
    assert results[-1][0] == 0, results[-1]  # doveadm needs no certificate


def test_removed_app_password_is_refused(instance, server_pem, imaps):
    made = app_password_module(instance, "user=alice device=tablet regenerate=true")
    assert made["changed"] and made["login"] == "alice+tablet"
    password = made["password"]
    # Dovecot looks at the file's mtime and size at most once a second: another
    # test's login in this same second may have just cached the old file.
    time.sleep(1.5)
    assert doveadm_auth(instance, "alice+tablet", password).returncode == 0
    if not cert_required_mode(instance):
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


# ------------------------------------------------------------- preflight

BAD_DOMAINS = ["*.example.test", "exa mple.org", "-dash.example", "example..org",
               "example.org\nauth_mechanisms = plain"]


def test_malformed_mail_domains_are_refused_before_anything_changes():
    """Each served domain becomes a pattern in dovecot.conf: the preflight lets only DNS names
    through, names every bad one and leaves the live configuration alone."""
    instances = load_instances()
    before = {i.name: i.run("sha256sum", "/etc/dovecot/dovecot.conf").stdout for i in instances}
    rc, out = playbook(os.path.join(SCENARIO_DIR, "apply_role.yml"),
                       "-e", json.dumps({"dovecot_mail_domains": ["example.test"] + BAD_DOMAINS}))
    assert rc != 0, out
    assert "must be a non-empty list of domain names" in out and "Nothing was changed" in out, out
    for bad in BAD_DOMAINS[:-1]:
        assert bad in out, (bad, out)
    # The good entry (listed first) is not named.
    assert re.search(r'not a domain name: \\?"\*\.example\.test', out), out
    assert "failed=1" in out and "changed=0" in out, out
    assert {i.name: i.run("sha256sum", "/etc/dovecot/dovecot.conf").stdout for i in instances} == before


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
