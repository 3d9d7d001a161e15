"""SMTP clients for the verifiers: smtplib over ports published on 127.0.0.1.

``attempt`` runs one mail transaction and reports where it stopped, so a test
can assert both "delivered" and "refused, and at which step".
"""

import collections
import smtplib
import socket
import ssl
import time

CLIENT_NAME = "client.example.test"

Outcome = collections.namedtuple("Outcome", "stage code text")
# stage: "connect"/"tls" (refused before SMTP), "auth", "mail", "rcpt", "data", or "sent"


def tls_context(cert=None, key=None, minimum=ssl.TLSVersion.TLSv1_2, maximum=None):
    """A client context that does not check the server (self-signed in tests)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def connect(port, implicit_tls=False, context=None, starttls=False, host="127.0.0.1", timeout=20):
    """An SMTP session after EHLO (and STARTTLS + EHLO when asked)."""
    if implicit_tls:
        client = smtplib.SMTP_SSL(host, port, local_hostname=CLIENT_NAME, timeout=timeout,
                                  context=context or tls_context())
    else:
        client = smtplib.SMTP(host, port, local_hostname=CLIENT_NAME, timeout=timeout)
    client.ehlo()
    if starttls:
        client.starttls(context=context or tls_context())
        client.ehlo()
    return client


def message(sender, rcpt, token):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: hardened.mailhost test %s\r\n\r\n"
            "Test message %s\r\n" % (sender, rcpt, token, token))


def attempt(port, sender, rcpt, token, implicit_tls=False, starttls=False, cert=None, key=None,
            login=None):
    """One transaction; returns an :class:`Outcome`. Never raises for a refusal."""
    stage = "connect"
    client = None
    try:
        stage = "tls" if (implicit_tls or starttls) else "connect"
        client = connect(port, implicit_tls, tls_context(cert, key), starttls)
        if login:
            stage = "auth"
            try:
                client.login(*login)
            except smtplib.SMTPAuthenticationError as exc:
                return Outcome("auth", exc.smtp_code, exc.smtp_error.decode("utf-8", "replace"))
            except smtplib.SMTPNotSupportedError as exc:
                return Outcome("auth", 0, str(exc))
        stage = "mail"
        code, text = client.mail(sender)
        if code >= 400:
            return Outcome("mail", code, text.decode("utf-8", "replace"))
        stage = "rcpt"
        code, text = client.rcpt(rcpt)
        if code >= 400:
            return Outcome("rcpt", code, text.decode("utf-8", "replace"))
        stage = "data"
        code, text = client.data(message(sender, rcpt, token))
        if code >= 400:
            return Outcome("data", code, text.decode("utf-8", "replace"))
        return Outcome("sent", code, text.decode("utf-8", "replace"))
    except smtplib.SMTPConnectError as exc:  # e.g. 421 "No client certificate presented"
        return Outcome(stage, exc.smtp_code, exc.smtp_error.decode("utf-8", "replace"))
    except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError, socket.timeout) as exc:
        return Outcome(stage, 0, "%s: %s" % (type(exc).__name__, exc))
    finally:
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError, ssl.SSLError):
                client.close()


def wait_for(predicate, timeout=30, step=0.5):
    """Poll ``predicate`` until it returns something true or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(step)
