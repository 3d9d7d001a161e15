# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Re-sign the client CA's CRL and refresh its exports (host mode of the ca role).

Run by hardened-ca-crl.service as the ca user. Imports the collection's CA code
installed next to this file, so the timer needs no Ansible on the host, only
python3-cryptography. Prints one line for the journal; exit status 1 with the
reason when the CA cannot sign (wrong passphrase, expired or damaged CA).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ansible_collections.hardened.mailhost.plugins.module_utils._ca import (  # noqa: E402
    CAError,
    CertificateAuthority,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--ca-dir", required=True)
    parser.add_argument("--passphrase-file", required=True)
    parser.add_argument("--days", type=int, default=None,
                        help="validity of the new CRL (default: the CA's setting)")
    args = parser.parse_args()
    try:
        with open(args.passphrase_file) as handle:
            passphrase = handle.read().rstrip("\n")
    except (IOError, OSError) as exc:
        print("cannot read the passphrase file: %s" % exc, file=sys.stderr)
        return 1
    ca = CertificateAuthority(args.ca_dir, passphrase)
    try:
        status = ca.crl(next_update_days=args.days)
    except CAError as exc:
        print("CRL not refreshed: %s" % exc, file=sys.stderr)
        return 1
    for warning in ca.warnings:  # e.g. a key still encrypted the old way
        print("warning: %s" % warning, file=sys.stderr)
    print("CRL %d signed, next update %s, %d revoked"
          % (status["number"], status["next_update"], len(status["revoked_serials"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
