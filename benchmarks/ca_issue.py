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

Prints both wall-clock times and the ratio. Bounded: N <= 5000, and the CLI
loop stops after --max-seconds and extrapolates (said so in the output).

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


def bench_store(folder, count):
    ca = CertificateAuthority(os.path.join(folder, "ca"), PASSPHRASE)
    ca.init()
    start = time.perf_counter()
    for i in range(count):
        issued = ca.issue("user%d@example.org" % i, "User %d" % i, "phone")
        with open(os.path.join(folder, "%d.p12" % i), "wb") as handle:
            handle.write(issued.pkcs12_bytes)
    elapsed = time.perf_counter() - start
    with open(ca.postfix_export_path) as handle:
        assert len(handle.read().splitlines()) == count, "export does not list every certificate"
    return elapsed


def bench_cli(folder, count, max_seconds):
    ca_dir = os.path.join(folder, "cli-ca")
    os.makedirs(os.path.join(ca_dir, "newcerts"), 0o700)
    open(os.path.join(ca_dir, "index.txt"), "w").close()
    with open(os.path.join(ca_dir, "serial"), "w") as handle:
        handle.write("01\n")
    cnf = os.path.join(ca_dir, "openssl.cnf")
    with open(cnf, "w") as handle:
        handle.write(OPENSSL_CNF.format(dir=ca_dir))
    # Same starting point as the store: an encrypted P-256 CA key and a CA cert.
    # The CA is made with the store so both loops sign with an identical CA.
    store = CertificateAuthority(os.path.join(folder, "cli-src"), PASSPHRASE)
    store.init()
    shutil.copy(store.path("ca.key"), os.path.join(ca_dir, "ca.key"))
    shutil.copy(store.path("ca.crt"), os.path.join(ca_dir, "ca.crt"))

    def run(*args):
        subprocess.run(("openssl",) + args, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=60)

    done = 0
    start = time.perf_counter()
    for i in range(count):
        key, csr, crt, p12 = (os.path.join(folder, "cli%d.%s" % (i, ext))
                              for ext in ("key", "csr", "crt", "p12"))
        run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr,
            "-subj", "/CN=user%d@example.org/O=User %d/OU=phone" % (i, i))
        run("ca", "-batch", "-config", cnf, "-rand_serial", "-notext", "-in", csr, "-out", crt,
            "-passin", "pass:" + PASSPHRASE)
        run("pkcs12", "-export", "-inkey", key, "-in", crt, "-certfile", os.path.join(ca_dir, "ca.crt"),
            "-out", p12, "-passout", "pass:" + secrets.token_urlsafe(18),
            "-keypbe", "AES-256-CBC", "-certpbe", "AES-256-CBC", "-macalg", "sha256")
        os.unlink(key)
        done += 1
        if time.perf_counter() - start > max_seconds:
            break
    elapsed = time.perf_counter() - start
    return elapsed, done


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="certificates per method (1-5000)")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="stop the openssl loop after this long and extrapolate")
    args = parser.parse_args()
    if not 1 <= args.n <= 5000:
        parser.error("-n must be between 1 and 5000")
    folder = tempfile.mkdtemp(prefix="ca-bench-")
    try:
        store = bench_store(folder, args.n)
        cli, done = bench_cli(folder, args.n, args.max_seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cli_full = cli * args.n / done
    print("cpus: %d  n: %d" % (os.cpu_count() or 0, args.n))
    print("module_utils store: %.2f s (%.2f ms per certificate + PKCS#12)" % (store, store * 1000 / args.n))
    note = "" if done == args.n else " (extrapolated from %d in %.1f s)" % (done, cli)
    print("openssl CLI loop:   %.2f s (%.2f ms per certificate + PKCS#12)%s"
          % (cli_full, cli_full * 1000 / args.n, note))
    print("ratio (CLI / store): %.1fx" % (cli_full / store))
    goal_time, goal_ratio = 15.0 * args.n / 1000, 5.0
    ok = store <= goal_time and cli_full / store >= goal_ratio
    print("goal (<= %.1f s and >= %.0fx): %s" % (goal_time, goal_ratio, "met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
