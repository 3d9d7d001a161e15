"""A real IMAP client (imaplib over TLS) that logs in the way a mail app would."""

import imaplib
import socket
import ssl


class ImapResult:
    def __init__(self, ok, stage, detail, conn=None):
        self.ok = ok
        self.stage = stage  # "tls" (handshake refused), "auth" (login refused) or "ok"
        self.detail = detail
        self.conn = conn  # logged-in IMAP4_SSL, or None

    def __repr__(self):
        return "ImapResult(ok=%r, stage=%r, detail=%r)" % (self.ok, self.stage, self.detail)

    def close(self):
        if self.conn is not None:
            try:
                self.conn.logout()
            except (imaplib.IMAP4.error, OSError, ssl.SSLError):
                pass
            self.conn = None


def tls_context(server_cert_pem=None, cert=None, key=None):
    """Client context: TLS 1.2+, the server checked against ``server_cert_pem`` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    if server_cert_pem:
        ctx.load_verify_locations(cadata=server_cert_pem)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def connect(port, ctx, host="127.0.0.1", timeout=45):
    # Dovecot delays answers to an address with recent failures (auth penalty,
    # up to 15 s plus the failure delay), and every test client shares one.
    return imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=timeout)


def _attempt(port, ctx, login, host="127.0.0.1"):
    try:
        conn = connect(port, ctx, host)
    except (ssl.SSLError, OSError, imaplib.IMAP4.abort, EOFError) as exc:
        return ImapResult(False, "tls", repr(exc))
    try:
        typ, data = login(conn)
    except (imaplib.IMAP4.error, ssl.SSLError, OSError, EOFError) as exc:
        # A TLS 1.3 server reports a refused certificate only after the
        # handshake, at the first read.
        stage = "tls" if isinstance(exc, (ssl.SSLError, OSError, EOFError, imaplib.IMAP4.abort)) else "auth"
        try:
            conn.shutdown()
        except (OSError, ssl.SSLError):
            pass
        return ImapResult(False, stage, repr(exc))
    return ImapResult(typ == "OK", "ok" if typ == "OK" else "auth", repr(data), conn if typ == "OK" else None)


def login_external(port, ctx, authzid="", host="127.0.0.1"):
    """SASL EXTERNAL: the user comes from the client certificate (``authzid`` empty)."""
    return _attempt(port, ctx, lambda c: c.authenticate("EXTERNAL", lambda _challenge: authzid.encode()), host)


def login_password(port, ctx, user, password, host="127.0.0.1"):
    """IMAP LOGIN with a user name and password."""
    return _attempt(port, ctx, lambda c: c.login(user, password), host)


def port_open(port, host="127.0.0.1", timeout=5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
