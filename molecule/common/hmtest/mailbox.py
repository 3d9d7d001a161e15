"""Client-side pieces of the whole-host story: TOTP secrets, SSH sessions that
run several commands (with stdin), PKCS#12 bundles and waiting for a message
in an IMAP INBOX."""

import os
import time

import paramiko
import pyotp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from hmtest import imap
from hmtest.ssh import LoginResult, _transport


def totp(instance, user):
    """The user's TOTP generator, from the secret file pam_google_authenticator reads."""
    home = instance.run("getent", "passwd", user).stdout.split(":")[5]
    first_line = instance.run("head", "-n1", home + "/.google_authenticator").stdout.strip()
    return pyotp.TOTP(first_line)


class Session:
    """A logged-in SSH transport on which several commands can run."""

    def __init__(self, transport, result):
        self.transport = transport
        self.result = result

    def run(self, command, stdin=None, timeout=60):
        """Run ``command``; returns (exit status, stdout, stderr) as text."""
        chan = self.transport.open_session(timeout=timeout)
        chan.settimeout(timeout)
        chan.exec_command(command)
        if stdin is not None:
            chan.sendall(stdin.encode())
        chan.shutdown_write()
        out = chan.makefile("rb").read().decode("utf-8", "replace")
        err = chan.makefile_stderr("rb").read().decode("utf-8", "replace")
        return chan.recv_exit_status(), out, err

    def close(self):
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()


def interactive_session(port, user, answers, host="127.0.0.1"):
    """Keyboard-interactive login (see hmtest.ssh.interactive_login); a Session either way.

    ``session.result.ok`` says whether the login worked; the transport stays
    open for ``session.run`` when it did.
    """
    prompts = []

    def handler(_title, _instructions, prompt_list):
        replies = []
        for text, _echo in prompt_list:
            prompts.append(text)
            replies.append(next((v for k, v in answers.items() if k in text.lower()), ""))
        return replies

    transport = _transport(port, host)
    try:
        transport.auth_interactive(user, handler)
    except paramiko.AuthenticationException as exc:
        return Session(transport, LoginResult(False, prompts, repr(exc), getattr(exc, "allowed_types", None)))
    return Session(transport, LoginResult(transport.is_authenticated(), prompts))


def pkcs12_to_pem(bundle, password, dest_dir):
    """Open a device's PKCS#12 bundle with its password, as a mail app would, and
    write its certificate and key as PEM files (key 0600) for Python's ssl.

    Returns (cert path, key path, certificate)."""
    with open(bundle, "rb") as handle:
        key, cert, _chain = pkcs12.load_key_and_certificates(handle.read(), password.encode())
    base = os.path.join(str(dest_dir), os.path.basename(bundle)[:-4])
    cert_path, key_path = base + ".crt", base + ".key"
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert_path, key_path, cert


def wait_in_inbox(port, ctx, token, timeout=45):
    """Log in with SASL EXTERNAL (the certificate in ``ctx``) until a message
    whose subject holds ``token`` is in the INBOX; returns its raw bytes.

    Raises AssertionError when the login is refused or the message does not
    arrive in time."""
    deadline = time.monotonic() + timeout
    while True:
        result = imap.login_external(port, ctx)
        assert result.ok, result
        try:
            typ, _ = result.conn.select("INBOX", readonly=True)
            assert typ == "OK"
            typ, data = result.conn.search(None, "SUBJECT", token)
            assert typ == "OK"
            found = data[0].split()
            if found:
                typ, parts = result.conn.fetch(found[0], "(BODY.PEEK[])")
                assert typ == "OK"
                return b"".join(p[1] for p in parts if isinstance(p, tuple))
        finally:
            result.close()
        assert time.monotonic() < deadline, "no message with %s reached the INBOX in %d s" % (token, timeout)
        time.sleep(2)
