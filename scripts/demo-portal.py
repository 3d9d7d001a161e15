#!/usr/bin/env python3
"""Use the demo host's certificate portal from the command line, as a person
would in a browser: log in with the Linux password, take the one-time code
from the mail that went to the "outside" address, issue a device certificate
and download its PKCS#12 bundle once.

    scripts/demo-portal.py code                  print the newest one-time code mailed to demo
    scripts/demo-portal.py issue --device laptop issue a device and save its bundle + password

The demo's outside address (demo@outside.example) is a test mail sink inside
the demo container (the portal's mail goes through the host's Postfix to it);
`code` reads it with `podman exec`. `issue` writes the bundle and its password
(0600, never printed) where scripts/demo-mail.py looks for them. Demo tool,
not part of the collection.
"""

import argparse
import http.client
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.parse

CACHE = os.environ.get("HM_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hardened-mailhost")
DEMO = os.path.join(CACHE, "demo")
CONTAINER = "hm-demo"
SINK = "/var/tmp/hm-sink"
SERVER_NAME = "mail.example.test"
CODE_RE = re.compile(r"^\s+(\d{8,})\s*$", re.M)


def sink_messages(rcpt):
    """(name, text) of every message the sink holds for ``rcpt``, oldest first."""
    listing = subprocess.run(["podman", "exec", CONTAINER, "sh", "-c", "ls -1 %s 2>/dev/null || true" % SINK],
                             check=True, capture_output=True, text=True, timeout=30).stdout.split()
    found = []
    for name in sorted(n for n in listing if n.endswith(".eml")):
        text = subprocess.run(["podman", "exec", CONTAINER, "cat", "%s/%s" % (SINK, name)],
                              check=True, capture_output=True, text=True, timeout=30).stdout
        if "X-Sink-Rcpt-To: <%s>" % rcpt in text:
            found.append((name, text))
    return found


def newest_code(rcpt, seen=(), timeout=60):
    """The code in the newest message to ``rcpt`` that is not in ``seen``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, text in reversed(sink_messages(rcpt)):
            if name in seen:
                continue
            match = CODE_RE.search(text)
            if match:
                return match.group(1)
        time.sleep(0.5)
    raise SystemExit("no code mail for %s arrived within %d s" % (rcpt, timeout))


class Portal:
    """A tiny browser: one HTTPS connection pinned to the demo's server
    certificate, the session cookie, and the CSRF token of the last page."""

    def __init__(self, port, cafile):
        self.port = port
        self.origin = "https://%s:%d" % (SERVER_NAME, port)
        self.context = ssl.create_default_context(cafile=cafile)
        # The demo's self-signed certificate names mail.example.test; the
        # connection goes to 127.0.0.1, so the name is checked by hand below.
        self.context.check_hostname = False
        self.cookies = {}
        self.token = None

    def request(self, method, path, form=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=30)
        try:
            conn.connect()
            names = [v for k, v in conn.sock.getpeercert().get("subjectAltName", ()) if k == "DNS"]
            if SERVER_NAME not in names:
                raise SystemExit("the portal's certificate does not name %s" % SERVER_NAME)
            headers = {"Host": "%s:%d" % (SERVER_NAME, self.port), "Referer": self.origin + "/"}
            if self.cookies:
                headers["Cookie"] = "; ".join("%s=%s" % item for item in self.cookies.items())
            body = None
            if form is not None:
                form = dict(form, csrf_token=self.token or "")
                body = urllib.parse.urlencode(form)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            for header, value in response.getheaders():
                if header.lower() == "set-cookie":
                    name, _, rest = value.partition("=")
                    self.cookies[name.strip()] = rest.split(";", 1)[0]
            if response.status in (301, 302, 303):
                location = urllib.parse.urlsplit(response.getheader("Location", "/"))
                return self.request("GET", location.path or "/")
            text = data.decode("utf-8", "replace") if "text/html" in response.getheader("Content-Type", "") else ""
            match = re.search(r'name="csrf_token" value="([^"]+)"', text)
            if match:
                self.token = match.group(1)
            return response.status, text, data
        finally:
            conn.close()


def page_error(text):
    match = re.search(r'class="error"[^>]*>(.*?)<', text, re.S)
    return match.group(1).strip() if match else "unexpected page"


def issue(args):
    bundle = os.path.join(args.bundle_dir, "%s_%s.p12" % (args.email, args.device))
    password_file = bundle[:-len(".p12")] + ".pass"
    with open(args.password_file, encoding="utf-8") as handle:
        login_password = handle.read().strip()
    portal = Portal(args.port, args.cafile)
    status, text, _ = portal.request("GET", "/")
    if status != 200:
        raise SystemExit("the portal answered %d on its login page" % status)
    seen = {name for name, _ in sink_messages(args.notify)}
    status, text, _ = portal.request("POST", "/login", {"user": args.user, "password": login_password})
    if 'id="code-form"' not in text:
        raise SystemExit("login refused: %s" % page_error(text))
    code = newest_code(args.notify, seen)
    status, text, _ = portal.request("POST", "/code", {"code": code})
    if 'id="issue"' not in text and "/issue" not in text:
        raise SystemExit("code refused: %s" % page_error(text))
    status, text, _ = portal.request("POST", "/issue", {"device": args.device, "replace": "1"})
    password = re.search(r'id="p12-password">([^<]+)<', text)
    handle = re.search(r'name="bundle" value="([^"]+)"', text)
    if status != 200 or not password or not handle:
        raise SystemExit("issue refused: %s" % page_error(text))
    status, _, data = portal.request("POST", "/download", {"bundle": handle.group(1)})
    if status != 200 or not data.startswith(b"0"):
        raise SystemExit("the download failed (%d)" % status)
    os.makedirs(args.bundle_dir, mode=0o700, exist_ok=True)
    for path, content in ((bundle, data), (password_file, password.group(1).strip().encode() + b"\n")):
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(tmp, path)
    portal.request("POST", "/logout", {})
    print("issued through the portal: %s (password in %s)" % (bundle, password_file))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("HM_DEMO_HTTPS_PORT", "8443")))
    parser.add_argument("--notify", default="demo@outside.example", help="the user's outside address")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("code", help="print the newest one-time code mailed to the outside address")
    p_issue = sub.add_parser("issue", help="issue a device certificate through the portal")
    p_issue.add_argument("--device", default="laptop")
    p_issue.add_argument("--user", default="demo")
    p_issue.add_argument("--email", default="demo@example.test")
    p_issue.add_argument("--password-file", default=os.path.join(DEMO, "demo_password"))
    p_issue.add_argument("--cafile", default=os.path.join(DEMO, "server.crt"))
    p_issue.add_argument("--bundle-dir", default=os.path.join(DEMO, "secrets", "bundles"))
    args = parser.parse_args()
    if args.command == "code":
        print(newest_code(args.notify, timeout=5))
        return 0
    issue(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
