"""Postfix: inbound on 25, relay on 465 only for listed client certificates.

Real clients (smtplib, openssl s_client) talk to the ports podman published on
127.0.0.1; relayed mail goes to the sink in the container (sink.test ->
127.0.0.1:2525), local mail to ~/Maildir, and every assertion reads the result.
"""

import hashlib
import json
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import uuid
from unittest import mock

import pytest
import yaml

from hmtest import smtp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, ".collections"))

from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority  # noqa: E402

CA_PASSPHRASE = "molecule-postfix-test-ca"  # see files/make_certs.py
SINK_DIR = "/var/tmp/hm-sink"


def token():
    return uuid.uuid4().hex[:16]


def client_files(ephemeral_dir, name):
    base = os.path.join(ephemeral_dir, "clients", name)
    return base + ".crt", base + ".key"


def sink_has(instance, tok):
    return instance.run("grep", "-rlF", tok, SINK_DIR, check=False).returncode == 0


def maildir_has(instance, user, tok):
    return instance.run("grep", "-rlF", tok, "/home/%s/Maildir/new" % user, check=False).returncode == 0


def assert_refused(instance, outcome, tok):
    assert outcome.stage != "sent", outcome
    # Give a wrongly accepted message the time to arrive before saying it did not.
    time.sleep(1)
    assert not sink_has(instance, tok)


def run_playbook(playbook, *extra):
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = os.path.join(ROOT, ".collections")
    env["ANSIBLE_ROLES_PATH"] = os.path.join(ROOT, "roles")
    env.setdefault("ANSIBLE_CONFIG", os.path.join(ROOT, "ansible.cfg"))
    proc = subprocess.run(
        [shutil.which("ansible-playbook") or "ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         playbook, *extra],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc


# ---------------------------------------------------------------- port 25

def test_25_offers_starttls_with_tls12_or_newer(instance):
    client = smtp.connect(instance.port(25))
    try:
        assert client.has_extn("starttls")
        client.starttls(context=smtp.tls_context())
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        client.close()


def test_25_refuses_tls11(instance):
    # The client allows anything down to SSLv3-era ciphers; only the server can say no.
    ctx = smtp.tls_context(minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    client = smtp.connect(instance.port(25))
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            client.starttls(context=ctx)
    finally:
        client.close()


def test_25_tls_seen_by_openssl(instance):
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", "127.0.0.1:%d" % instance.port(25), "-starttls", "smtp",
         "-brief"], input="QUIT\n", capture_output=True, text=True, timeout=30, check=False)
    out = proc.stdout + proc.stderr
    assert "Protocol version: TLSv1.3" in out or "Protocol version: TLSv1.2" in out, out


def test_25_delivers_to_a_local_user(instance):
    tok = token()
    out = smtp.attempt(instance.port(25), "bob@example.test", "alice@example.test", tok, starttls=True)
    assert out.stage == "sent", out
    assert smtp.wait_for(lambda: maildir_has(instance, "alice", tok), timeout=30)


def test_25_refuses_unknown_local_user(instance):
    out = smtp.attempt(instance.port(25), "bob@example.test", "nobody-here@example.test", token())
    assert out.stage == "rcpt" and out.code == 550, out


@pytest.mark.parametrize("starttls", [False, True], ids=["plain", "starttls"])
def test_25_is_not_a_relay(instance, starttls):
    tok = token()
    out = smtp.attempt(instance.port(25), "alice@example.test", "victim@sink.test", tok, starttls=starttls)
    assert out.stage == "rcpt" and out.code == 554 and "Relay access denied" in out.text, out
    assert_refused(instance, out, tok)


def test_25_with_a_listed_certificate_is_still_not_a_relay(instance, ephemeral_dir):
    cert, key = client_files(ephemeral_dir, "alice-laptop")
    tok = token()
    out = smtp.attempt(instance.port(25), "alice@example.test", "victim@sink.test", tok,
                       starttls=True, cert=cert, key=key)
    assert out.stage == "rcpt" and out.code == 554, out
    assert_refused(instance, out, tok)


def test_25_refuses_unauthorised_pipelining(instance):
    with socket.create_connection(("127.0.0.1", instance.port(25)), timeout=20) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"EHLO client.example.test\r\nMAIL FROM:<bob@example.test>\r\n")
        replies = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = reader.readline()
            if not line:
                break
            replies += line
            if line[:4] in (b"554 ", b"250 ") and b"MAIL" not in line and line.startswith(b"554"):
                break
        assert b"554 5.5.0" in replies and b"synchronization" in replies, replies


def test_25_limits_concurrent_connections_per_client(instance):
    # converge.yml sets smtpd_client_connection_count_limit = 8 for this test.
    port = instance.port(25)
    socks, greetings = [], []
    try:
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            socks.append(sock)
            greetings.append(sock.makefile("rb").readline())
            time.sleep(0.2)
    finally:
        for sock in socks:
            sock.close()
    assert all(g.startswith(b"220") for g in greetings[:8]), greetings
    assert any(g.startswith(b"421") and b"too many connections" in g.lower() for g in greetings[8:]), greetings


# --------------------------------------------------------------- port 465

def test_465_relays_for_a_listed_certificate(instance, ephemeral_dir):
    cert, key = client_files(ephemeral_dir, "alice-laptop")
    tok = token()
    out = smtp.attempt(instance.port(465), "alice@example.test", "friend@sink.test", tok,
                       implicit_tls=True, cert=cert, key=key)
    assert out.stage == "sent", out
    assert smtp.wait_for(lambda: sink_has(instance, tok), timeout=30)


def test_465_certificate_may_send_only_as_its_own_address(instance, ephemeral_dir):
    cert, key = client_files(ephemeral_dir, "alice-laptop")
    tok = token()
    out = smtp.attempt(instance.port(465), "bob@example.test", "friend@sink.test", tok,
                       implicit_tls=True, cert=cert, key=key)
    assert out.stage in ("mail", "rcpt") and out.code == 554, out
    assert "not owned by this client certificate" in out.text, out
    assert_refused(instance, out, tok)


@pytest.mark.parametrize("client", [None, "alice-foreign", "alice-expired"],
                         ids=["no-certificate", "foreign-ca", "expired"])
def test_465_refuses_other_clients(instance, ephemeral_dir, client):
    cert, key = client_files(ephemeral_dir, client) if client else (None, None)
    tok = token()
    out = smtp.attempt(instance.port(465), "alice@example.test", "friend@sink.test", tok,
                       implicit_tls=True, cert=cert, key=key)
    assert_refused(instance, out, tok)


def test_465_revoked_certificate_stops_relaying(instance, ephemeral_dir, tmp_path):
    """Issue a fresh certificate, see it relay, revoke it, see it refused."""
    ca = CertificateAuthority(os.path.join(ephemeral_dir, "ca"), CA_PASSPHRASE)
    device = "revoke-%s-%s" % (instance.platform, token()[:8])
    issued = ca.issue("alice@example.test", "Alice", device)
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    scenario = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    limit = ["--limit", instance.name]
    run_playbook(os.path.join(scenario, "push_client_certs.yml"), *limit)

    tok = token()
    out = smtp.attempt(instance.port(465), "alice@example.test", "friend@sink.test", tok,
                       implicit_tls=True, cert=str(cert), key=str(key))
    assert out.stage == "sent", out
    assert smtp.wait_for(lambda: sink_has(instance, tok), timeout=30)

    # The operator's playbook: revoke on the controller's CA, push to group mailhosts.
    mailhosts = tmp_path / "mailhosts.yml"
    mailhosts.write_text("mailhosts:\n  hosts:\n    %s: {}\n" % instance.name)
    run_playbook(os.path.join(ROOT, "playbooks", "revoke_cert.yml"), "-i", str(mailhosts),
                 "--limit", "localhost,%s" % instance.name,
                 "-e", "hardened_ca_dir=%s" % os.path.join(ephemeral_dir, "ca"),
                 "-e", "hardened_ca_passphrase=%s" % CA_PASSPHRASE, "-e", "cert_serial=%s" % issued.serial)
    assert [c["state"] for c in ca.info()["certificates"] if c["serial"] == issued.serial] == ["revoked"]

    tok = token()
    out = smtp.attempt(instance.port(465), "alice@example.test", "friend@sink.test", tok,
                       implicit_tls=True, cert=str(cert), key=str(key))
    assert_refused(instance, out, tok)


# ------------------------------------------------ app passwords (Dovecot SASL)


TABLE = "/etc/postfix/hardened/relay_clientcerts"


def test_push_heals_a_stale_table(instance):
    """A push that stopped between the copy and postmap left the map newer than its
    table: the next push rebuilds the table (and reloads); the one after changes nothing."""
    scenario = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    limit = ["--limit", instance.name]
    instance.run("sh", "-c", 'touch -d "@$(( $(date +%%s) + 2 ))" %s' % TABLE)
    built = instance.run("stat", "-c", "%Y", TABLE + ".db").stdout
    time.sleep(3)
    out = run_playbook(os.path.join(scenario, "push_client_certs.yml"), *limit).stdout
    assert "changed=1" in out, out[-2000:]
    assert instance.run("stat", "-c", "%Y", TABLE + ".db").stdout != built
    out = run_playbook(os.path.join(scenario, "push_client_certs.yml"), *limit).stdout
    assert "changed=0" in out, out[-2000:]


def test_push_refuses_a_bad_map_and_changes_nothing(instance, tmp_path):
    scenario = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    bad = tmp_path / "relay_clientcerts"
    bad.write_text("AB:CD alice@example.test\n")
    live = instance.run("sha256sum", TABLE, TABLE + ".db").stdout
    proc = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", instance.name,
         os.path.join(scenario, "push_client_certs.yml"), "-e", "postfix_relay_clientcerts_src=%s" % bad],
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections")),
        capture_output=True, text=True, timeout=300, check=False)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0 and "is not a client certificate map" in out and "Nothing was changed" in out, out
    assert instance.run("sha256sum", TABLE, TABLE + ".db").stdout == live


def app_password(ephemeral_dir, instance, user, device):
    with open(os.path.join(ephemeral_dir, "app-%s-%s-%s" % (instance.name, user, device)), encoding="utf-8") as handle:
        return handle.read().strip()


def test_465_relays_with_the_right_app_password(instance, ephemeral_dir):
    tok = token()
    login = ("bob+phone", app_password(ephemeral_dir, instance, "bob", "phone"))
    out = smtp.attempt(instance.port(465), "bob@example.test", "friend@sink.test", tok,
                       implicit_tls=True, login=login)
    assert out.stage == "sent", out
    assert smtp.wait_for(lambda: sink_has(instance, tok), timeout=30)


def test_465_refuses_a_wrong_app_password(instance, ephemeral_dir):
    tok = token()
    wrong = app_password(ephemeral_dir, instance, "bob", "phone")[::-1]
    out = smtp.attempt(instance.port(465), "bob@example.test", "friend@sink.test", tok,
                       implicit_tls=True, login=("bob+phone", wrong))
    assert out.stage == "auth" and out.code == 535, out
    assert_refused(instance, out, tok)


def test_465_app_password_may_send_only_as_its_user(instance, ephemeral_dir):
    tok = token()
    login = ("bob+phone", app_password(ephemeral_dir, instance, "bob", "phone"))
    out = smtp.attempt(instance.port(465), "alice@example.test", "friend@sink.test", tok,
                       implicit_tls=True, login=login)
    assert out.stage in ("mail", "rcpt") and out.code == 553 and "not owned by user bob" in out.text, out
    assert_refused(instance, out, tok)


def test_25_never_offers_auth(instance):
    client = smtp.connect(instance.port(25), starttls=True)
    try:
        assert not client.has_extn("auth")
    finally:
        client.close()


def test_465_removed_app_password_is_refused(instance, ephemeral_dir):
    device = "gone%s" % token()[:6]

    def app_password_task(state):
        proc = subprocess.run(
            [shutil.which("ansible") or "ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], instance.name,
             "-m", "hardened.mailhost.app_password", "-a", "user=bob device=%s state=%s" % (device, state),
             "-o"],
            env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections")),
            capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    out = app_password_task("present")
    # Dovecot reads the passwd-file at most once a second: give it the time.
    time.sleep(1.5)
    password = re.search(r'"password":\s*"([^"]+)"', out).group(1)
    login = ("bob+%s" % device, password)
    tok = token()
    sent = smtp.attempt(instance.port(465), "bob@example.test", "friend@sink.test", tok,
                        implicit_tls=True, login=login)
    assert sent.stage == "sent", sent

    app_password_task("absent")
    time.sleep(1.5)
    tok = token()
    refused = smtp.attempt(instance.port(465), "bob@example.test", "friend@sink.test", tok,
                           implicit_tls=True, login=login)
    assert refused.stage == "auth" and refused.code == 535, refused
    assert_refused(instance, refused, tok)


# ------------------------------------------------ fail2ban (SMTP AUTH failures)

JAIL = "hm-postfix-sasl"
# The test's own limit, set at run time. converge.yml sets 10, above the four
# AUTH failures the other tests make per host (smtplib's login() fails PLAIN
# and then LOGIN).
BAN_AFTER = 3


def jail_status(instance):
    """The fields of `fail2ban-client status <jail>`, e.g. "Total failed", "Banned IP list"."""
    out = instance.run("fail2ban-client", "status", JAIL).stdout
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip(" \t|`-")] = value.strip()
    return fields


def banned(instance):
    return jail_status(instance)["Banned IP list"].split()


def total_failed(instance):
    return int(jail_status(instance)["Total failed"])


def connect_465(port):
    """None when a new TLS connection to 465 gets Postfix's 220 greeting, else the error."""
    try:
        client = smtp.connect(port, implicit_tls=True, timeout=5)
    except (ConnectionError, TimeoutError, ssl.SSLError, smtplib.SMTPServerDisconnected) as exc:
        return exc
    client.quit()
    return None


def tcp_answers(port, timeout=5):
    """The first bytes a new TCP connection gets, or the error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            return sock.recv(64) or ConnectionResetError("closed before any byte")
    except (ConnectionError, TimeoutError) as exc:
        return exc


def auth_plain(port, user, password):
    """One AUTH PLAIN on a new 465 connection: the reply code.

    One failure in the log per call, where smtplib's login() would go on with LOGIN.
    """
    client = smtp.connect(port, implicit_tls=True)
    try:
        client.user, client.password = user, password
        return client.auth("PLAIN", client.auth_plain)[0]
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code
    finally:
        client.close()


def test_fail2ban_jail_is_active(instance):
    assert instance.run("systemctl", "is-active", "fail2ban", check=False).stdout.strip() == "active"
    jails = instance.run("fail2ban-client", "status").stdout
    assert JAIL in jails, jails
    status = jail_status(instance)
    # Debian runs Postfix as postfix@-.service: the jail must read that unit's journal.
    assert "_SYSTEMD_UNIT=postfix@-.service" in status["Journal matches"], status

    def get(what):
        return instance.run("fail2ban-client", "get", JAIL, what).stdout.strip()

    assert get("maxretry") == "10"  # converge.yml
    assert get("findtime") == "600" and get("bantime") == "3600"  # the role's 10m and 1h
    assert "nftables" in get("actions")


def test_fail2ban_bans_repeated_wrong_app_passwords(instance, ephemeral_dir):
    """BAN_AFTER wrong app passwords on 465 ban the client: 465 and 25 refuse it, until unbanned."""
    client_ip = instance.gateway  # every host client arrives from the podman gateway
    port = instance.port(465)
    wrong = app_password(ephemeral_dir, instance, "bob", "phone")[::-1]
    maxretry = instance.run("fail2ban-client", "get", JAIL, "maxretry").stdout.strip()
    try:
        # A clean slate: the other tests' failures are still counted (within
        # findtime); a restarted jail forgets them and reads the journal on from
        # where it stopped.
        instance.run("fail2ban-client", "restart", JAIL)
        assert smtp.wait_for(lambda: instance.run("fail2ban-client", "status", JAIL, check=False).returncode == 0,
                             timeout=10)
        assert jail_status(instance)["Currently failed"] == "0", jail_status(instance)
        assert client_ip not in banned(instance)
        assert connect_465(port) is None
        instance.run("fail2ban-client", "set", JAIL, "maxretry", str(BAN_AFTER))

        # The same wrong password each time (a phone with a stale app password):
        # Dovecot's penalty then stays small, and every try is answered 535.
        for attempt in range(1, BAN_AFTER + 1):
            failed = total_failed(instance)
            code = auth_plain(port, "bob+phone", wrong)
            assert code == 535, (attempt, code)
            # fail2ban reads each failure from the journal.
            assert smtp.wait_for(lambda: total_failed(instance) > failed, timeout=10), \
                ("fail2ban did not count failure %d" % attempt, jail_status(instance))
            if attempt < BAN_AFTER:
                assert client_ip not in banned(instance), ("banned after %d failures" % attempt)
        assert smtp.wait_for(lambda: client_ip in banned(instance), timeout=10), jail_status(instance)

        # Really banned on the jail's ports: a new connection is refused (nftables
        # reject) before Postfix says anything, on 465 and on 25.
        refused = connect_465(port)
        assert refused is not None, "465 still answers after the ban"
        on_25 = tcp_answers(instance.port(25))
        assert not isinstance(on_25, bytes), on_25
        # Only the jail's ports: SSH (how the administrator gets in) stays open.
        on_22 = tcp_answers(instance.port(22))
        assert isinstance(on_22, bytes) and on_22.startswith(b"SSH-"), on_22
    finally:
        instance.run("fail2ban-client", "set", JAIL, "maxretry", maxretry)
        instance.run("fail2ban-client", "set", JAIL, "unbanip", client_ip, check=False)

    assert client_ip not in banned(instance), jail_status(instance)
    assert smtp.wait_for(lambda: connect_465(port) is None, timeout=10), connect_465(port)
    right = app_password(ephemeral_dir, instance, "bob", "phone")
    out = smtp.attempt(port, "bob@example.test", "friend@sink.test", token(), implicit_tls=True,
                       login=("bob+phone", right))
    assert out.stage == "sent", out


# ------------------------------------------------ header From (hm-header-from milter)

def submit(port, envelope_from, rcpt, tok, header_from, **kwargs):
    """One transaction whose header carries ``header_from`` (a value, a list of
    values for several From: lines, or None for none) instead of the envelope sender."""
    values = [] if header_from is None else ([header_from] if isinstance(header_from, str) else header_from)

    def message(_sender, rcpt_, token_):
        head = "".join("From: %s\r\n" % value for value in values)
        return head + ("To: <%s>\r\nSubject: hardened.mailhost test %s\r\n\r\nTest message %s\r\n"
                       % (rcpt_, token_, token_))

    with mock.patch.object(smtp, "message", message):
        return smtp.attempt(port, envelope_from, rcpt, tok, **kwargs)


def submission(instance, ephemeral_dir, how):
    """(port, attempt keyword arguments, own address) for a way of submitting."""
    if how == "465-certificate":
        cert, key = client_files(ephemeral_dir, "alice-laptop")
        return instance.port(465), dict(implicit_tls=True, cert=cert, key=key), "alice@example.test"
    login = ("bob+phone", app_password(ephemeral_dir, instance, "bob", "phone"))
    if how == "465-app-password":
        return instance.port(465), dict(implicit_tls=True, login=login), "bob@example.test"
    assert how == "587-app-password"
    return instance.port(587), dict(starttls=True, login=login), "bob@example.test"


HOW = ["465-certificate", "465-app-password", "587-app-password"]


def assert_rejected_at_data(instance, outcome, tok, text):
    assert outcome.stage == "data" and outcome.code == 550, outcome
    assert "5.7.1" in outcome.text and text in outcome.text, outcome
    assert_refused(instance, outcome, tok)


@pytest.mark.parametrize("how", HOW)
def test_header_from_of_someone_else_is_rejected(instance, ephemeral_dir, how):
    """Envelope own address, header From: ceo@<domain>: 550 at the end of DATA, nothing relayed."""
    port, kwargs, own = submission(instance, ephemeral_dir, how)
    tok = token()
    out = submit(port, own, "friend@sink.test", tok, "CEO <ceo@example.test>", **kwargs)
    assert_rejected_at_data(instance, out, tok, "<ceo@example.test>: header From address not owned")


@pytest.mark.parametrize("how", HOW)
def test_own_header_from_is_delivered(instance, ephemeral_dir, how):
    """Own address with an encoded display name and other letter case: relayed to the sink."""
    port, kwargs, own = submission(instance, ephemeral_dir, how)
    tok = token()
    out = submit(port, own, "friend@sink.test", tok, "=?utf-8?q?J=C3=B6rg_Device?= <%s>" % own.upper(), **kwargs)
    assert out.stage == "sent", out
    assert smtp.wait_for(lambda: sink_has(instance, tok), timeout=30)


def test_app_password_user_may_use_its_address_in_every_shared_domain(instance, ephemeral_dir):
    port, kwargs, _own = submission(instance, ephemeral_dir, "587-app-password")
    tok = token()
    out = submit(port, "bob@example.test", "friend@sink.test", tok, "bob+lists@example.org", **kwargs)
    assert out.stage == "sent", out
    assert smtp.wait_for(lambda: sink_has(instance, tok), timeout=30)


@pytest.mark.parametrize("header_from, text", [
    (None, "no From"),
    (["bob@example.test", "bob@example.test"], "2 From"),
    ("bob@example.test, ceo@example.test", "<ceo@example.test>"),
    ('"ceo@example.test" <bob@example.test>', "Display name"),
    ("=?utf-8?b?Y2VvQGV4YW1wbGUudGVzdA==?= <bob@example.test>", "Display name"),
    ("bob@example.net", "not in a domain of this host"),
], ids=["missing", "two-headers", "two-addresses", "display-name", "encoded-display-name", "other-domain"])
def test_unclear_or_foreign_header_from_is_rejected(instance, ephemeral_dir, header_from, text):
    port, kwargs, own = submission(instance, ephemeral_dir, "465-app-password")
    tok = token()
    out = submit(port, own, "friend@sink.test", tok, header_from, **kwargs)
    assert_rejected_at_data(instance, out, tok, text)


def test_port_25_inbound_is_not_checked_even_with_the_milter_stopped(instance, ephemeral_dir):
    """Inbound mail on 25 with anyone's header From is delivered; 465 fails closed (4xx)
    while the milter is down, and works again when it is back."""
    port, kwargs, own = submission(instance, ephemeral_dir, "465-app-password")
    instance.run("systemctl", "stop", "hm-header-from")
    try:
        tok = token()
        out = submit(instance.port(25), "bob@example.test", "alice@example.test", tok,
                     "The Boss <ceo@example.test>", starttls=True)
        assert out.stage == "sent", out
        assert smtp.wait_for(lambda: maildir_has(instance, "alice", tok), timeout=30)

        tok = token()
        out = submit(port, own, "friend@sink.test", tok, own, **kwargs)
        # Postfix cannot reach the milter when the session starts and answers every
        # command after the greeting (here AUTH) with a temporary error.
        assert out.stage != "sent" and 400 <= out.code < 500, out
        assert_refused(instance, out, tok)
    finally:
        instance.run("systemctl", "start", "hm-header-from")
    assert smtp.wait_for(
        lambda: instance.run("test", "-S", "/var/spool/postfix/hm-milter/header-from.sock", check=False).returncode == 0,
        timeout=15)
    tok = token()
    out = submit(port, own, "friend@sink.test", tok, own, **kwargs)
    assert out.stage == "sent", out


def test_milter_runs_sandboxed_as_its_own_user(instance):
    show = dict(line.split("=", 1) for line in instance.run(
        "systemctl", "show", "hm-header-from", "-p", "ActiveState,User,NoNewPrivileges,ProtectSystem,"
        "PrivateNetwork,CapabilityBoundingSet,RestrictAddressFamilies,SystemCallFilter,MainPID").stdout.splitlines())
    assert show["ActiveState"] == "active" and show["User"] == "hm-milter", show
    assert show["NoNewPrivileges"] == "yes" and show["ProtectSystem"] == "strict", show
    assert show["PrivateNetwork"] == "yes" and show["CapabilityBoundingSet"] == "", show
    assert show["RestrictAddressFamilies"] == "AF_UNIX" and show["SystemCallFilter"], show
    status = instance.run("cat", "/proc/%s/status" % show["MainPID"]).stdout
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M) and re.search(r"^Seccomp:\s+2$", status, re.M), status
    assert re.search(r"^CapEff:\s+0+$", status, re.M), status
    # Only Postfix (group postfix) reaches the socket.
    stat = instance.run("stat", "-c", "%U %G %a", "/var/spool/postfix/hm-milter/header-from.sock").stdout.split()
    assert stat[0] == "hm-milter" and stat[1] == "postfix" and stat[2] in ("660", "770"), stat
    # Attached to the submission services only.
    master = instance.run("postconf", "-P").stdout
    milters = sorted(line.split("/", 1)[0] for line in master.splitlines() if "/smtpd_milters = unix:hm-milter/" in line)
    assert milters == ["submission", "submissions"], master
    assert "milter_default_action = tempfail" in master
    assert instance.run("postconf", "-h", "smtpd_milters").stdout.strip() == ""


# ------------------------------------------------ port 587 (STARTTLS, app passwords)

def test_587_relays_with_the_right_app_password(instance, ephemeral_dir):
    tok = token()
    login = ("bob+phone", app_password(ephemeral_dir, instance, "bob", "phone"))
    out = smtp.attempt(instance.port(587), "bob@example.test", "friend@sink.test", tok, starttls=True, login=login)
    assert out.stage == "sent", out
    assert smtp.wait_for(lambda: sink_has(instance, tok), timeout=30)


def test_587_refuses_to_relay_without_auth(instance):
    tok = token()
    out = smtp.attempt(instance.port(587), "bob@example.test", "friend@sink.test", tok, starttls=True)
    # smtpd_relay_restrictions on 587 end in a plain "reject": "Access denied".
    assert out.stage == "rcpt" and out.code == 554 and "5.7.1" in out.text, out
    assert_refused(instance, out, tok)


def test_587_wants_starttls_before_anything(instance):
    client = smtp.connect(instance.port(587))
    try:
        assert not client.has_extn("auth")
        code, text = client.mail("bob@example.test")
        assert code == 530 and b"STARTTLS" in text, (code, text)
    finally:
        client.close()


# ------------------------------------------------ TLS profiles (465/587 strict, 25 opportunistic)

def tls12_handshake(port, cipher, implicit_tls):
    """The cipher a TLS 1.2 handshake offering only ``cipher`` ends with, or the error."""
    ctx = smtp.tls_context(minimum=ssl.TLSVersion.TLSv1_2, maximum=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(cipher + ":@SECLEVEL=0")
    try:
        client = smtp.connect(port, implicit_tls=implicit_tls, starttls=not implicit_tls, context=ctx, timeout=10)
    except (ssl.SSLError, ConnectionError, smtplib.SMTPServerDisconnected) as exc:
        return exc
    try:
        return client.sock.cipher()[0]
    finally:
        client.close()


@pytest.mark.parametrize("cipher", ["AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384",
                                    "DHE-RSA-AES128-SHA", "AES256-SHA256"],
                         ids=["static-rsa", "sha1-cbc", "sha384-cbc", "dhe-cbc", "static-rsa-cbc"])
@pytest.mark.parametrize("service", ["465", "587"])
def test_submission_ports_refuse_suites_without_forward_secrecy_or_aead(instance, service, cipher):
    port = instance.port(int(service))
    assert isinstance(tls12_handshake(port, cipher, service == "465"), Exception)


@pytest.mark.parametrize("service", ["465", "587"])
def test_submission_ports_take_ecdhe_and_dhe_aead_suites(instance, service):
    port = instance.port(int(service))
    for cipher in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305", "DHE-RSA-AES256-GCM-SHA384"):
        assert tls12_handshake(port, cipher, service == "465") == cipher


def test_25_stays_opportunistic_with_older_suites(instance):
    # A sender that only has CBC suites still gets encryption on 25 rather than plaintext.
    assert tls12_handshake(instance.port(25), "ECDHE-RSA-AES128-SHA", False) == "ECDHE-RSA-AES128-SHA"


SSLYZE = os.environ.get("HM_SSLYZE") or os.path.join(
    os.environ.get("HM_CACHE_DIR", os.path.expanduser("~/.cache/hardened-mailhost")), "sslyze-venv", "bin", "sslyze")
MOZILLA_INTERMEDIATE_TLS12 = re.compile(
    r"^TLS_(ECDHE_(RSA|ECDSA)|DHE_RSA)_WITH_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)$")


def sslyze_scan(instance, service, tmp_path):
    """sslyze's JSON result for 127.0.0.1:<service> seen from inside the container's
    network namespace (loopback is exempt from anvil, which throttles a scan from the gateway)."""
    assert os.access(SSLYZE, os.X_OK), "sslyze not found at %s: run scripts/setup.sh" % SSLYZE
    pid = subprocess.run(["podman", "inspect", "-f", "{{.State.Pid}}", instance.name],
                         check=True, capture_output=True, text=True).stdout.strip()
    out = tmp_path / ("sslyze-%s.json" % service)
    target = ["--starttls=smtp", "127.0.0.1:587"] if service == "587" else ["127.0.0.1:465"]
    proc = subprocess.run(
        ["nsenter", "-t", pid, "-n", SSLYZE, "--quiet", "--json_out=%s" % out,
         "--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", *target],
        capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())["server_scan_results"][0]
    assert result["scan_status"] == "COMPLETED", result.get("connectivity_error_trace")
    return result["scan_result"]


def accepted(scan, name):
    attempt = scan[name]
    assert attempt["status"] == "COMPLETED", attempt
    return [suite["cipher_suite"]["name"] for suite in attempt["result"]["accepted_cipher_suites"]]


@pytest.mark.parametrize("service", ["465", "587"])
def test_sslyze_sees_mozilla_intermediate_on_submission_ports(instance, service, tmp_path):
    scan = sslyze_scan(instance, service, tmp_path)
    for old in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"):
        assert accepted(scan, old) == [], old
    tls12 = accepted(scan, "tls_1_2_cipher_suites")
    assert tls12 and [s for s in tls12 if not MOZILLA_INTERMEDIATE_TLS12.match(s)] == [], tls12
    assert accepted(scan, "tls_1_3_cipher_suites"), "TLS 1.3 not offered"


# ------------------------------------------------ anvil: AUTH commands per client and minute

AUTH_LOOP = r"""
import json, smtplib, ssl, sys
address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
user, password = sys.stdin.read().split("\n")[:2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
codes = []
for _ in range(count):
    client = smtplib.SMTP(address, port, local_hostname="client.example.test", timeout=20,
                          source_address=(address, 0))
    try:
        client.starttls(context=ctx)
        client.ehlo("client.example.test")
        client.user, client.password = user, password
        try:
            codes.append(client.auth("PLAIN", client.auth_plain)[0])
        except smtplib.SMTPAuthenticationError as exc:
            codes.append(exc.smtp_code)
            last = exc.smtp_error.decode("utf-8", "replace")
    finally:
        client.close()
print(json.dumps({"codes": codes, "last": locals().get("last", "")}))
"""


def test_587_auth_rate_limit_refuses_the_client_after_the_limit(instance, ephemeral_dir):
    """limit AUTH commands in a minute succeed, the next one is refused, even with the right password.

    The client runs in the container and connects from the container's own address
    to itself: a source address of its own for anvil (the tests from the host all
    share the gateway's counter), and fail2ban never bans the host's own addresses.
    """
    limit = int(instance.run("postconf", "-h", "smtpd_client_auth_rate_limit").stdout)
    assert 0 < limit <= 200, limit
    password = app_password(ephemeral_dir, instance, "bob", "phone")
    proc = instance.run("python3", "-c", AUTH_LOOP, instance.address, "587", str(limit + 1),
                        stdin="bob+phone\n%s\n" % password)
    result = json.loads(proc.stdout)
    codes = result["codes"]
    assert codes[:limit] == [235] * limit, codes
    assert codes[limit] == 450 and "too many AUTH commands" in result["last"], result


# ------------------------------------------------ shared mail domains: bad input

def test_bad_mail_domains_are_refused_before_any_change(instance):
    before = instance.run("sha256sum", "/etc/postfix/main.cf", "/etc/postfix/hardened/sender_login.regexp",
                          "/etc/systemd/system/hm-header-from.service").stdout
    scenario = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
               ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles"))
    proc = subprocess.run(
        [shutil.which("ansible-playbook") or "ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         os.path.join(scenario, "bad_mail_domains.yml"), "--limit", instance.name,
         "-e", '{"hardened_mailhost_mail_domains": ["example.test", "not a domain"], "postfix_domain": "example.net"}'],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "must be a non-empty list of dotted domain names" in out, out[-3000:]
    assert "postfix_domain ('example.net') must be one of the mail domains" in out, out[-3000:]
    assert "Nothing was changed." in out and "changed=0" in out, out[-3000:]
    after = instance.run("sha256sum", "/etc/postfix/main.cf", "/etc/postfix/hardened/sender_login.regexp",
                         "/etc/systemd/system/hm-header-from.service").stdout
    assert after == before


# ------------------------------------------------ drift of the role's programs

LIBEXEC = "/usr/local/lib/hardened-mailhost"


def test_converge_puts_back_changed_program_files_and_only_those(instance, tmp_path):
    """The role checks its 15 program files with one scan and copies only the
    ones that differ: an edited policy script, a quota module made writable for
    all, a deleted milter module and an alarm module given to another owner are
    put back byte for byte with their mode and owner; the files nobody touched
    are not copied."""
    touched = {
        "ccert_sender_policy.py": "0644",
        "hm_sender_quota.py": "0644",
        "hm_header_from/tables.py": "0644",
        "hm_sender_guard/events.py": "0644",
    }
    instance.run("sh", "-c", "echo '# edited by hand' >> %s/ccert_sender_policy.py" % LIBEXEC)
    instance.run("chmod", "0666", LIBEXEC + "/hm_sender_quota.py")
    instance.run("rm", LIBEXEC + "/hm_header_from/tables.py")
    instance.run("chown", "nobody", LIBEXEC + "/hm_sender_guard/events.py")
    proc = run_playbook(os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml"),
                        "--limit", instance.name)
    copied = set(re.findall(r"^changed: \[%s\] => \(item=%s/(\S+)\)" % (re.escape(instance.name), re.escape(LIBEXEC)),
                            proc.stdout, re.M))
    assert copied == set(touched), proc.stdout[-4000:]
    for name, mode in touched.items():
        with open(os.path.join(ROOT, "roles", "postfix", "files", name), "rb") as handle:
            wanted = hashlib.sha256(handle.read()).hexdigest()
        got = instance.run("sha256sum", "%s/%s" % (LIBEXEC, name)).stdout.split()[0]
        assert got == wanted, name
        assert instance.run("stat", "-c", "%a %U %G", "%s/%s" % (LIBEXEC, name)).stdout.split() == \
            [mode.lstrip("0"), "root", "root"], name
    assert instance.run("systemctl", "is-active", "hm-header-from").stdout.strip() == "active"
    # A run of the milter's part alone (no scan: its tag leaves out the install
    # part) checks each of its files with the copy itself: nothing to change.
    with open(os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml"), encoding="utf-8") as handle:
        play = yaml.safe_load(handle)[0]
    tagged = tmp_path / "milter_only.yml"
    tagged.write_text(yaml.safe_dump([{"name": "The postfix role, statically (tags select its parts)",
                                       "hosts": "all", "gather_facts": True, "vars": play["vars"],
                                       "roles": ["hardened.mailhost.postfix"]}]))
    proc = run_playbook(str(tagged), "--limit", instance.name, "--tags", "postfix_milter")
    recap = re.search(r"^%s\s*:\s*ok=(\d+)\s+changed=(\d+)" % re.escape(instance.name), proc.stdout, re.M)
    assert recap and int(recap.group(2)) == 0, proc.stdout[-4000:]
    assert "ok: [%s] => (item=%s/hm_header_from/tables.py)" % (instance.name, LIBEXEC) in proc.stdout, \
        proc.stdout[-4000:]
