#!/usr/bin/env python3
"""Benchmark: issue N device certificates with PKCS#12 bundles, two ways.

1. Through the collection's CA store (``plugins/module_utils/_ca.py``): one
   ``CertificateAuthority`` object, ``issue()`` N times. Every issue takes the
   lock, checks for a duplicate, signs, rewrites the index and the Postfix
   export atomically, and builds a modern (AES-256) PKCS#12 with a random
   password.
2. The same work through the ``openssl`` command line, as a shell script would
   do it: per certificate ``openssl req`` (new P-256 key + CSR), ``openssl ca``
   (signs with the encrypted CA key, keeps ``index.txt``) and ``openssl pkcs12
   -export`` (AES-256, random password).

The two loops run interleaved in chunks of 50, so load from other work on a
shared machine hits both alike. Prints wall-clock and CPU times and the
ratios. Bounded: N <= 5000, and the CLI loop stops after --max-seconds and
extrapolates (said so in the output).

    . scripts/env.sh && python benchmarks/ca_issue.py [-n 1000]
"""

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".collections"))

from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority  # noqa: E402

PASSPHRASE = "benchmark passphrase"

OPENSSL_CNF = """\
[ ca ]
default_ca = bench
[ bench ]
dir = {dir}
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir/newcerts
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
default_days = 120
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = none
x509_extensions = client_ext
[ policy_any ]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
[ client_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = email:copy
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class StoreLoop:
    """Issue through the collection's CA store."""

    def __init__(self, folder):
        self.folder = folder
        self.ca = CertificateAuthority(os.path.join(folder, "ca"), PASSPHRASE)
        self.ca.init()

    def issue(self, i):
        issued = self.ca.issue("user%d@example.org" % i, "User %d" % i, "phone")
        with open(os.path.join(self.folder, "%d.p12" % i), "wb") as handle:
            handle.write(issued.pkcs12_bytes)

    def check(self, count):
        with open(self.ca.postfix_export_path) as handle:
            assert len(handle.read().splitlines()) == count, "export does not list every certificate"


class CliLoop:
    """The same work as a shell script would do it with the openssl command line."""

    def __init__(self, folder):
        self.folder = folder
        self.ca_dir = os.path.join(folder, "cli-ca")
        os.makedirs(os.path.join(self.ca_dir, "newcerts"), 0o700)
        open(os.path.join(self.ca_dir, "index.txt"), "w").close()
        with open(os.path.join(self.ca_dir, "serial"), "w") as handle:
            handle.write("01\n")
        self.cnf = os.path.join(self.ca_dir, "openssl.cnf")
        with open(self.cnf, "w") as handle:
            handle.write(OPENSSL_CNF.format(dir=self.ca_dir))
        # Same starting point: an encrypted P-256 CA key and its certificate,
        # made by the store so both loops sign with an identical CA.
        source = CertificateAuthority(os.path.join(folder, "cli-src"), PASSPHRASE)
        source.init()
        shutil.copy(source.path("ca.key"), os.path.join(self.ca_dir, "ca.key"))
        shutil.copy(source.path("ca.crt"), os.path.join(self.ca_dir, "ca.crt"))

    @staticmethod
    def run(*args):
        subprocess.run(("openssl",) + args, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=60)

    def issue(self, i):
        key, csr, crt, p12 = (os.path.join(self.folder, "cli%d.%s" % (i, ext))
                              for ext in ("key", "csr", "crt", "p12"))
        self.run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", key, "-out", csr,
                 "-subj", "/CN=user%d@example.org/O=User %d/OU=phone" % (i, i))
        self.run("ca", "-batch", "-config", self.cnf, "-rand_serial", "-notext", "-in", csr,
                 "-out", crt, "-passin", "pass:" + PASSPHRASE)
        self.run("pkcs12", "-export", "-inkey", key, "-in", crt,
                 "-certfile", os.path.join(self.ca_dir, "ca.crt"), "-out", p12,
                 "-passout", "pass:" + secrets.token_urlsafe(18),
                 "-keypbe", "AES-256-CBC", "-certpbe", "AES-256-CBC", "-macalg", "sha256")
        os.unlink(key)


def cpu_seconds():
    times = os.times()
    return times.user + times.system, times.children_user + times.children_system


def run_interleaved(folder, count, max_seconds, chunk=50):
    """Alternate chunks of both loops, so a machine shared with other work
    slows both alike; returns wall and CPU seconds of each and the CLI count."""
    store, cli = StoreLoop(folder), CliLoop(folder)
    wall = {"store": 0.0, "cli": 0.0}
    cpu = {"store": 0.0, "cli": 0.0}
    done_cli = 0
    for first in range(0, count, chunk):
        todo = range(first, min(first + chunk, count))
        own, _kids = cpu_seconds()
        start = time.perf_counter()
        for i in todo:
            store.issue(i)
        wall["store"] += time.perf_counter() - start
        cpu["store"] += cpu_seconds()[0] - own
        if wall["cli"] < max_seconds:
            _own, kids = cpu_seconds()
            start = time.perf_counter()
            for i in todo:
                cli.issue(i)
            wall["cli"] += time.perf_counter() - start
            cpu["cli"] += cpu_seconds()[1] - kids
            done_cli += len(todo)
    store.check(count)
    return wall, cpu, done_cli


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="certificates per method (1-5000)")
    parser.add_argument("--dir", default=None,
                        help="work below this folder (default: the system temp folder); "
                             "a tmpfs such as /dev/shm takes the disk's fsync latency out")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="stop the openssl loop after this long and extrapolate")
    args = parser.parse_args()
    if not 1 <= args.n <= 5000:
        parser.error("-n must be between 1 and 5000")
    folder = tempfile.mkdtemp(prefix="ca-bench-", dir=args.dir)
    try:
        wall, cpu, done = run_interleaved(folder, args.n, args.max_seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    scale = float(args.n) / done
    cli_wall, cli_cpu = wall["cli"] * scale, cpu["cli"] * scale
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("cpus: %d  n: %d  folder: %s  load average (1 min) at the end: %.1f"
          % (os.cpu_count() or 0, args.n, os.path.dirname(folder), load))
    print("module_utils store: %6.2f s wall (%.2f ms each), %6.2f s CPU"
          % (wall["store"], wall["store"] * 1000 / args.n, cpu["store"]))
    note = "" if done == args.n else "  (extrapolated from %d)" % done
    print("openssl CLI loop:   %6.2f s wall (%.2f ms each), %6.2f s CPU%s"
          % (cli_wall, cli_wall * 1000 / args.n, cli_cpu, note))
    ratio = cli_wall / wall["store"]
    print("ratio CLI / store: %.1fx wall, %.1fx CPU" % (ratio, cli_cpu / max(cpu["store"], 1e-9)))
    goal_time, goal_ratio = 15.0 * args.n / 1000, 5.0
    ok = wall["store"] <= goal_time and ratio >= goal_ratio
    print("goal (store <= %.1f s wall and >= %.0fx faster): %s"
          % (goal_time, goal_ratio, "met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
