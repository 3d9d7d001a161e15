"""A hundred users on one host (issue 16), on both releases.

On the first Debian 12 and Debian 13 host the converge enrolled 100 generated
users (u001..u100, hm_site_many_users in molecule.yml) besides alice and bob:
one TOTP secret each (one totp_secret run, one totp_qr run), a sudo PIN each
(one userdb_pin run), and, from prepare, two device certificates each (one
client_cert run), so the fingerprint map holds hundreds of entries. Proven
here: every user has a secret, a PIN entry and a QR code for that host, and a
sample of them, through the real services, logs in over SSH with a code and
the password (the password alone is refused), becomes root with the PIN (the
login password is refused), sends through 465 with one device's certificate
and reads it over IMAPS with the other's.
"""

import json
import os
import time
import uuid

import pytest
import yaml

from hmtest import imap, mailbox, smtp

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(SCENARIO, "molecule.yml"), encoding="utf-8") as _fh:
    _ALL = yaml.safe_load(_fh)["provisioner"]["inventory"]["group_vars"]["all"]
COUNT = int(_ALL["hm_site_many_count"])
PIN = _ALL["hm_site_many_pin"]
USERS = ["u%03d" % n for n in range(1, COUNT + 1)]
# First, last and one from the middle.
SAMPLE = [USERS[0], USERS[COUNT // 2], USERS[-1]]


def password(user):
    return "login-%s-Secret1" % user


def skip_unless_many(instance):
    if instance.platform not in ("debian12", "debian13"):
        pytest.skip("the generated users live on the first Debian 12 and Debian 13 host only")


def fresh_code(generator):
    """A code of a 30 s window with time left (a code is accepted once)."""
    left = 30 - time.time() % 30
    if left < 5:
        time.sleep(left + 0.5)
    return generator.now()


@pytest.fixture(scope="module")
def bundles(ephemeral_dir):
    folder = os.path.join(ephemeral_dir, "bundles", "many")
    with open(os.path.join(folder, "passwords.json"), encoding="utf-8") as handle:
        return folder, json.load(handle)


def device_pem(bundles, tmp_path, user, device):
    folder, passwords = bundles
    path = os.path.join(folder, "%s@example.test_%s.p12" % (user, device))
    assert os.stat(path).st_mode & 0o777 == 0o600
    cert, key, parsed = mailbox.pkcs12_to_pem(path, passwords[path], tmp_path)
    assert "%s@example.test" % user in parsed.subject.rfc4514_string()
    return cert, key


def test_every_user_is_enrolled_on_the_host(instance, ephemeral_dir):
    skip_unless_many(instance)
    # One secret file per user, 0400/0600 and owned by the user.
    out = instance.run("sh", "-c", "for u in %s; do stat -c '%%U %%a' /home/$u/.google_authenticator; done"
                       % " ".join(USERS)).stdout.split("\n")
    stats = [line for line in out if line.strip()]
    assert len(stats) == COUNT
    assert all(line.split()[0] == user and line.split()[1] in ("400", "600") for line, user in zip(stats, USERS))
    # One PIN entry per user in pam_userdb's database (and alice's and bob's).
    keys = instance.run("python3", "-c", "import dbm.ndbm; d = dbm.ndbm.open('/etc/security/sudo_pin', 'r');"
                        " print(' '.join(sorted(k.decode() for k in d.keys())))").stdout.split()
    assert set(USERS) <= set(keys) and {"alice", "bob"} <= set(keys), keys[:5]
    # Every user's QR code for this host in the shared folder.
    totp = os.path.join(ephemeral_dir, "shared", "totp")
    names = set(os.listdir(totp))
    missing = [u for u in USERS if "%s@%s.png" % (u, instance.name) not in names
               or "%s@%s.svg" % (u, instance.name) not in names]
    assert not missing, missing[:5]
    # Both devices of every user relay: their fingerprints are in Postfix's map.
    relay = instance.run("grep", "-cE", r" u[0-9]{3}@example\.test$", "/etc/postfix/hardened/relay_clientcerts")
    assert int(relay.stdout.strip()) >= 2 * COUNT, relay.stdout


@pytest.mark.parametrize("user", SAMPLE)
def test_sampled_user_logs_in_with_code_and_password_and_sudo_wants_the_pin(instance, user):
    skip_unless_many(instance)
    port = instance.port(22)
    generator = mailbox.totp(instance, user)
    with mailbox.interactive_session(port, user, {"verification code": fresh_code(generator),
                                                  "password": password(user)}) as session:
        assert session.result.ok, session.result
        status, out, _err = session.run("id -un")
        assert (status, out.strip()) == (0, user)
        status, out, err = session.run("sudo -S -k id -un", stdin=password(user) + "\n")
        assert status != 0 and out == "" and "PIN" in err, err
        status, out, err = session.run("sudo -S -k id -un", stdin=PIN + "\n")
        assert (status, out.strip()) == (0, "root"), err
    # The right password with a wrong code is refused.
    wrong = "%06d" % ((int(generator.now()) + 1) % 1000000)
    with mailbox.interactive_session(port, user, {"verification code": wrong,
                                                  "password": password(user)}) as session:
        assert not session.result.ok, session.result


@pytest.mark.parametrize("user", SAMPLE)
def test_sampled_user_sends_on_465_and_reads_on_993_with_device_certificates(instance, user, bundles,
                                                                             tmp_path):
    skip_unless_many(instance)
    server_pem = instance.run("cat", "/etc/ssl/hardened-mailhost/server.crt").stdout
    phone = device_pem(bundles, tmp_path, user, "phone-" + instance.platform)
    laptop = device_pem(bundles, tmp_path, user, "laptop-" + instance.platform)
    tok = uuid.uuid4().hex[:16]
    email = "%s@example.test" % user
    out = smtp.attempt(instance.port(465), email, email, tok, implicit_tls=True, cert=phone[0], key=phone[1])
    assert out.stage == "sent", out
    raw = mailbox.wait_in_inbox(instance.port(993), imap.tls_context(server_pem, laptop[0], laptop[1]), tok)
    assert ("From: <%s>" % email).encode() in raw
    # A certificate for the same address that the CA never signed is refused on both ports.
    stranger_cert = os.path.join(str(tmp_path), "stranger.crt")
    stranger_key = os.path.join(str(tmp_path), "stranger.key")
    _self_signed(stranger_cert, stranger_key, email)
    refused = smtp.attempt(instance.port(465), email, email, uuid.uuid4().hex[:16], implicit_tls=True,
                           cert=stranger_cert, key=stranger_key)
    assert refused.stage != "sent", refused
    login = imap.login_external(instance.port(993), imap.tls_context(server_pem, stranger_cert, stranger_key))
    assert not login.ok, login


def _self_signed(cert_path, key_path, email):
    """A client certificate for ``email`` that the site's CA never signed."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
