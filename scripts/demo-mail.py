#!/usr/bin/env python3
"""Send and read mail on the demo host with a device's PKCS#12 bundle, the way
a mail app does: SMTP over implicit TLS (465) and IMAPS (993) with the device's
client certificate, IMAP login by SASL EXTERNAL (no password at all).

    scripts/demo-mail.py send --to demo@example.test [--subject ...]
    scripts/demo-mail.py read

Defaults come from the demo (scripts/demo.sh): bundle, its password file, the
server certificate and the ports published on 127.0.0.1.
"""

import argparse
import email.message
import email.parser
import email.utils
import imaplib
import os
import smtplib
import ssl
import sys
import tempfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

CACHE = os.environ.get("HM_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hardened-mailhost")
DEMO = os.path.join(CACHE, "demo")


def context(args, workdir):
    """TLS client context with the device's certificate; the server is checked
    against the demo's self-signed certificate."""
    with open(args.bundle, "rb") as handle, open(args.password_file, encoding="utf-8") as pw:
        key, cert, _chain = pkcs12.load_key_and_certificates(handle.read(), pw.read().strip().encode())
    cert_path, key_path = os.path.join(workdir, "device.crt"), os.path.join(workdir, "device.key")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the demo's certificate names the container, not 127.0.0.1
    ctx.load_verify_locations(args.server_cert)
    ctx.load_cert_chain(cert_path, key_path)
    address = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return ctx, address


def send(args, ctx, address):
    msg = email.message.EmailMessage()
    msg["From"] = address
    msg["To"] = args.to or address
    msg["Subject"] = args.subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=address.split("@")[-1])
    msg.set_content("Sent with a client certificate, no password.\n")
    with smtplib.SMTP_SSL(args.host, args.smtps_port, context=ctx, timeout=30) as client:
        client.send_message(msg)
    print("sent %r from %s to %s through %s:%d" % (args.subject, address, msg["To"], args.host, args.smtps_port))


def read(args, ctx, address):
    conn = imaplib.IMAP4_SSL(args.host, args.imaps_port, ssl_context=ctx, timeout=30)
    try:
        typ, data = conn.authenticate("EXTERNAL", lambda _challenge: b"")
        if typ != "OK":
            sys.exit("IMAP login refused: %r" % data)
        conn.select("INBOX", readonly=True)
        _typ, data = conn.search(None, "ALL")
        ids = data[0].split()
        print("%s: %d message(s) in INBOX (IMAPS %s:%d, SASL EXTERNAL)" % (address, len(ids), args.host, args.imaps_port))
        for num in ids[-args.last:]:
            _typ, parts = conn.fetch(num, "(BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])")
            headers = email.parser.BytesHeaderParser().parsebytes(parts[0][1])
            print("  %-24s %-30s %s" % (headers["Date"], headers["From"], headers["Subject"]))
    finally:
        conn.logout()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["send", "read"])
    parser.add_argument("--bundle", default=os.path.join(DEMO, "secrets", "bundles", "demo@example.test_laptop.p12"))
    parser.add_argument("--password-file", default=os.path.join(DEMO, "secrets", "bundles", "demo@example.test_laptop.pass"))
    parser.add_argument("--server-cert", default=os.path.join(DEMO, "server.crt"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtps-port", type=int, default=int(os.environ.get("HM_DEMO_SMTPS_PORT", "4465")))
    parser.add_argument("--imaps-port", type=int, default=int(os.environ.get("HM_DEMO_IMAPS_PORT", "9993")))
    parser.add_argument("--to", help="recipient (default: the certificate's own address)")
    parser.add_argument("--subject", default="Hello from the demo")
    parser.add_argument("--last", type=int, default=10, help="messages to list")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hm-demo-mail-") as workdir:
        os.chmod(workdir, 0o700)
        ctx, address = context(args, workdir)
        (send if args.action == "send" else read)(args, ctx, address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
