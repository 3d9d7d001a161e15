# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The certificate portal's privileged helper (hardened.mailhost.cert_portal).

The web process (hm_cert_portal, unprivileged) never reads the CA key or the
shadow file. It asks this helper, over a unix socket that only the portal's
user may open, a few narrow questions: check this password, check this
one-time code, list / issue / revoke / download for the user of this
session. The helper knows who is logged in (its own session table); it
never takes a user name from an issue, list or revoke request.

It runs as the ca role's ``ca`` user (the CA folder is its own) with the
``shadow`` group added so that pam_unix can check other users' passwords
(PLATFORM-NOTES: as non-root, pam_unix's unix_chkpwd only checks the caller's
own password). Certificates come from the collection's ``_ca.py``, the same
code the modules run, installed by the ca role's host mode.

Modules: ``config`` (settings file), ``state`` (one-time codes, sessions,
rate limits), ``bundles`` (PKCS#12 files: download once, deleted after their
lifetime), ``service`` (the requests), ``server`` (the socket), ``mailer``,
``sync`` (root: install the CA exports for Postfix and Dovecot),
``remind`` (expiry reminders).
"""
