# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command line: ``python3 -m hm_header_from --socket unix:PATH --domain D [...]``."""

from __future__ import absolute_import, division, print_function

import argparse
import sys

from hm_header_from.tables import Tables


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="hm_header_from",
        description="Milter: the header From: of an authenticated submission must belong to its identity.")
    parser.add_argument("--socket", required=True, help="unix:/path of the milter socket")
    parser.add_argument("--clientcerts", default="",
                        help="the CA's relay_clientcerts export (fingerprint and address per line)")
    parser.add_argument("--sender-login-map", default="",
                        help="Postfix regexp table of smtpd_sender_login_maps")
    parser.add_argument("--domain", action="append", default=[], required=True,
                        help="a mail domain of this host (repeat for each)")
    parser.add_argument("--timeout", type=int, default=30)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tables = Tables(args.clientcerts, args.sender_login_map, args.domain)
    from hm_header_from import milter
    milter.run(args.socket, tables, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
