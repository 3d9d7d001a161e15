"""A real authoritative DNS server (Debian's nsd) on 127.0.0.1 at a free high port, for tests.

The test starts it with the zones it needs and stops it by its PID. Nothing is
installed here: without the ``nsd`` package (scripts/setup.sh installs it) the
tests that need it are skipped, saying so.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

NSD = shutil.which("nsd") or ("/usr/sbin/nsd" if os.path.exists("/usr/sbin/nsd") else None)
needs_nsd = pytest.mark.skipif(
    NSD is None, reason="Debian's nsd is not installed (apt-get install nsd; scripts/setup.sh does)")


def zone_sections(snippet):
    """Split a mail_dns_records zone snippet into {zone: text of its section}."""
    sections = {}
    current = None
    for line in snippet.splitlines():
        if line.startswith("; ---- zone "):
            current = line[len("; ---- zone "):].rstrip(".")
            sections[current] = []
        elif current and line and not line.startswith(";"):
            sections[current].append(line)
    return {zone: "\n".join(lines) + "\n" for zone, lines in sections.items()}


def _free_port():
    for _attempt in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port > 1024:
                return port
    raise RuntimeError("no free port on 127.0.0.1")


class NsdServer(object):
    """nsd in the foreground (``-d``) serving ``zones`` ({zone: records text}); ``stop()`` by PID."""

    def __init__(self, folder, zones):
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.port = _free_port()
        self.proc = None
        self.write_zones(zones)

    def write_zones(self, zones):
        self.zones = dict(zones)
        conf = ["server:",
                "  ip-address: 127.0.0.1@%d" % self.port,
                "  server-count: 1",
                '  username: ""',
                '  chroot: ""',
                '  database: ""',
                "  do-ip6: no",
                "  verbosity: 1",
                "  hide-version: yes"]
        for key, name in (("zonelistfile", "zone.list"), ("xfrdfile", "xfrd.state"),
                          ("xfrdir", "xfr"), ("pidfile", "nsd.pid"), ("logfile", "nsd.log"),
                          ("zonesdir", ".")):
            conf.append('  %s: "%s"' % (key, os.path.join(self.folder, name)))
        conf += ["remote-control:", "  control-enable: no"]
        for zone, text in sorted(self.zones.items()):
            path = os.path.join(self.folder, zone + ".zone")
            with open(path, "w") as handle:
                handle.write("$ORIGIN %s.\n$TTL 300\n" % zone)
                handle.write("@ SOA ns.%s. hostmaster.%s. 1 3600 600 86400 300\n" % (zone, zone))
                handle.write("@ NS ns.%s.\nns A 127.0.0.1\n" % zone)
                handle.write(text)
            check = subprocess.run(["nsd-checkzone", zone, path], capture_output=True, text=True,
                                   timeout=30, check=False)
            assert check.returncode == 0, "zone %s does not load: %s%s" % (zone, check.stdout, check.stderr)
            conf += ["zone:", "  name: %s" % zone, '  zonefile: "%s"' % path]
        self.conf = os.path.join(self.folder, "nsd.conf")
        with open(self.conf, "w") as handle:
            handle.write("\n".join(conf) + "\n")

    def start(self):
        import dns.message
        import dns.query

        self.proc = subprocess.Popen([NSD, "-d", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        zone = sorted(self.zones)[0]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nsd exited with %s: %s" % (self.proc.returncode, self.log()))
            try:
                answer = dns.query.udp(dns.message.make_query(zone + ".", "SOA"), "127.0.0.1",
                                       port=self.port, timeout=0.5)
                if answer.answer:
                    return self
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("nsd did not answer within 15 s: %s" % self.log())

    def restart(self, zones):
        self.stop()
        self.write_zones(zones)
        return self.start()

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def log(self):
        try:
            with open(os.path.join(self.folder, "nsd.log")) as handle:
                return handle.read()[-2000:]
        except OSError:
            return ""

    def resolver(self):
        """A dnspython Resolver that asks only this server."""
        import dns.resolver

        res = dns.resolver.Resolver(configure=False)
        res.nameservers = ["127.0.0.1"]
        res.port = self.port
        res.timeout = res.lifetime = 3
        return res
