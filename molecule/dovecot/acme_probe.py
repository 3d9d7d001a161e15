"""Probe the mail ports with TLS handshakes while a command (a renewal) runs.

Copied into the container and run there by tests/test_acme.py, so that the
probes come from 127.0.0.1 (Postfix's rate limits exempt it) and measure the
services, not podman's port forwarding. One thread per port handshakes in a
loop; for each port it reports the certificate serials it saw in order, the
failed attempts, and two times:

- ``longest_gap``: the longest time from the end of one successful handshake to
  the start of the next attempt that succeeded. Failed or refused attempts in
  between count into it, so a port closed for two seconds shows a gap of two
  seconds; the duration of a successful handshake itself does not (on a loaded
  machine one handshake can take over a second without the port being down).
- ``slowest_handshake``: the longest successful handshake, reported beside it.

Every loop is bounded in time.

Usage: python3 acme_probe.py CLIENT_CERT CLIENT_KEY -- COMMAND...
Prints one JSON object.
"""

import json
import socket
import ssl
import subprocess
import sys
import threading
import time

from cryptography import x509

PORTS = (465, 993)
PAUSE = 0.02        # between two handshakes on one port
SETTLE = 1.0        # probing before the command starts
MAX_SECONDS = 240   # hard bound on the whole probe
AFTER = 15.0        # after the command: wait at most this long for a new serial


def handshake(port, ctx):
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        with ctx.wrap_socket(sock) as tls:
            return "%x" % x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


class Probe(threading.Thread):
    def __init__(self, port, ctx, stop, deadline):
        super().__init__(daemon=True)
        self.port, self.ctx, self.stop, self.deadline = port, ctx, stop, deadline
        self.longest_gap = 0.0
        self.slowest = 0.0
        self.failures = []
        self.handshakes = 0
        self.serials = []

    def run(self):
        last_ok = None  # end of the last successful handshake
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            start = time.monotonic()
            try:
                serial = handshake(self.port, self.ctx)
            except (OSError, ssl.SSLError) as exc:
                self.failures.append("%.3f %r" % (time.monotonic(), exc))
            else:
                now = time.monotonic()
                if last_ok is not None:
                    self.longest_gap = max(self.longest_gap, start - last_ok)
                self.slowest = max(self.slowest, now - start)
                last_ok = now
                self.handshakes += 1
                if not self.serials or self.serials[-1] != serial:
                    self.serials.append(serial)
            self.stop.wait(PAUSE)

    def report(self):
        return {"longest_gap": round(self.longest_gap, 3), "slowest_handshake": round(self.slowest, 3),
                "handshakes": self.handshakes,
                "failures": self.failures[:20], "failure_count": len(self.failures), "serials": self.serials}


def main(argv):
    cert, key, sep, command = argv[0], argv[1], argv[2], argv[3:]
    assert sep == "--" and command, __doc__
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the serial is what counts here; the test verifies the chain
    ctx.load_cert_chain(cert, key)
    stop = threading.Event()
    deadline = time.monotonic() + MAX_SECONDS
    probes = [Probe(port, ctx, stop, deadline) for port in PORTS]
    for probe in probes:
        probe.start()
    time.sleep(SETTLE)
    before = {probe.port: probe.serials[-1] if probe.serials else None for probe in probes}
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=MAX_SECONDS / 2, check=False)
    seconds = time.monotonic() - started
    until = min(deadline, time.monotonic() + AFTER)
    while time.monotonic() < until and not all(p.serials and p.serials[-1] != before[p.port] for p in probes):
        time.sleep(0.1)
    time.sleep(0.5)  # a little after the switch, so a gap right after it counts too
    stop.set()
    for probe in probes:
        probe.join(10)
    json.dump({"rc": proc.returncode, "seconds": round(seconds, 3), "stderr": proc.stderr[-1500:],
               "ports": {str(p.port): p.report() for p in probes}}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
