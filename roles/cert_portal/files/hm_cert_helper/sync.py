# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install the CA's exports for Postfix and Dovecot (root, from a systemd path unit).

``hm-cert-portal-exports.path`` starts this whenever the CA (issue, revoke,
the daily CRL timer) rewrites ``export/postfix_relay_clientcerts`` or
``export/dovecot_ca_crl.pem``. A changed fingerprint map is copied, built
with ``postmap`` and Postfix reloaded; a changed CA + CRL file is copied and
Dovecot reloaded. A file that does not look like what it should be is
refused (logged, exit status 1) and the live one stays. Rounds repeat until
nothing changes, so a change made while a round ran is not lost.
"""

from __future__ import absolute_import, division, print_function

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

MAP_LINE = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){31} [^@\s]+@[^@\s]+$")


class SyncError(Exception):
    pass


def check_map(data):
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if line.strip() and not line.startswith("#") and not MAP_LINE.match(line):
            raise SyncError("line %d is not '<SHA-256 fingerprint> <address>'" % number)


def check_ca_crl(data):
    if b"-----BEGIN CERTIFICATE-----" not in data or b"-----BEGIN X509 CRL-----" not in data:
        raise SyncError("it does not hold a CA certificate and a CRL")


def install(src, dest, check, mode=0o644):
    """Copy ``src`` over ``dest`` atomically when the content differs; returns changed."""
    with open(src, "rb") as handle:
        data = handle.read()
    try:
        with open(dest, "rb") as handle:
            if handle.read() == data:
                return False
    except OSError:
        pass
    try:
        check(data)
    except SyncError as exc:
        raise SyncError("%s was not installed: %s" % (src, exc))
    fd, tmp = tempfile.mkstemp(prefix=".hm-sync.", dir=os.path.dirname(dest))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            fd = None
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, dest)
        tmp = None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            os.unlink(tmp)
    return True


def sync_round(args, run=subprocess.run):
    reload_units = []
    if install(os.path.join(args.export_dir, "postfix_relay_clientcerts"), args.postfix_map, check_map):
        run(["postmap", "%s:%s" % (args.postfix_db_type, args.postfix_map)], check=True)
        reload_units.append("postfix.service")
    if install(os.path.join(args.export_dir, "dovecot_ca_crl.pem"), args.dovecot_ca_file, check_ca_crl):
        reload_units.append("dovecot.service")
    if reload_units:
        run(["systemctl", "reload"] + reload_units, check=True)
    return reload_units


def main(argv=None, run=subprocess.run, sleep=time.sleep):
    parser = argparse.ArgumentParser(prog="hm_cert_helper sync", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--export-dir", required=True)
    parser.add_argument("--postfix-map", required=True)
    parser.add_argument("--postfix-db-type", default="hash")
    parser.add_argument("--dovecot-ca-file", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    start = time.monotonic()
    for _round in range(args.rounds):
        try:
            units = sync_round(args, run)
        except (SyncError, OSError, subprocess.CalledProcessError) as exc:
            print("exports not installed: %s" % exc, file=sys.stderr)
            return 1
        if not units:
            break
        print("installed the new CA exports, reloaded %s in %.2f s"
              % (" ".join(units), time.monotonic() - start))
        sleep(0.2)
    return 0
