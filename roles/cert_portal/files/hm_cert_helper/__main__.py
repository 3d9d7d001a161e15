# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``python3 -m hm_cert_helper serve|remind --config FILE`` and ``sync --export-dir ...``."""

from __future__ import absolute_import, division, print_function

import logging
import sys


def _settings(path):
    from ansible_collections.hardened.mailhost.plugins.module_utils import _ca
    from hm_cert_helper import config
    return _ca, config.load(path, _ca.validate_email, _ca.check_identity)


def _mailer(cfg):
    from hm_cert_helper.mailer import Mailer
    return Mailer(cfg["smtp_host"], cfg["smtp_port"], cfg["mail_from"], cfg["portal_url"], cfg["host_name"])


def serve(path):
    from hm_cert_helper import pamauth, server
    from hm_cert_helper.bundles import BundleStore
    from hm_cert_helper.service import Helper
    _ca, cfg = _settings(path)

    def ca_factory():
        with open(cfg["passphrase_file"], encoding="utf-8") as handle:
            passphrase = handle.read().rstrip("\n")
        return _ca.CertificateAuthority(cfg["ca_dir"], passphrase)

    bundles = BundleStore(cfg["bundle_dir"], cfg["bundle_lifetime"])
    removed = bundles.sweep()  # what a crash or a stop left behind
    if removed:
        logging.getLogger("hm_cert_helper").info("deleted %d expired certificate file(s) at start", removed)
    helper = Helper(cfg, ca_factory, pamauth.make_authenticator(cfg["pam_service"]), _mailer(cfg),
                    bundles, ca_module=_ca)
    server.start_sweeper(bundles, interval=max(1, min(5, cfg["bundle_lifetime"] // 4)))
    srv = server.Server(helper, server.allowed_uids(cfg["app_user"]))
    srv.serve_forever()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not argv or argv[0] not in ("serve", "remind", "sync"):
        print("usage: python3 -m hm_cert_helper serve|remind --config FILE | sync --export-dir ...",
              file=sys.stderr)
        return 2
    if argv[0] == "sync":
        from hm_cert_helper import sync
        return sync.main(argv[1:])
    if len(argv) != 3 or argv[1] != "--config":
        print("usage: python3 -m hm_cert_helper %s --config FILE" % argv[0], file=sys.stderr)
        return 2
    if argv[0] == "serve":
        serve(argv[2])
        return 0
    from hm_cert_helper import remind
    _ca, cfg = _settings(argv[2])
    remind.run(cfg, _ca.CertificateAuthority(cfg["ca_dir"]), _mailer(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
