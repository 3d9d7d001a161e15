# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Password check through PAM (Debian's python3-pampy, ``import pam``).

The service file /etc/pam.d/<service> is the portal's own (pam_faillock
around pam_unix, written by the role). Only the authentication phase runs,
and the faillock tally is cleared there by a right password only.
"""

from __future__ import absolute_import, division, print_function


def make_authenticator(service):
    import pam  # python3-pampy; imported here so unit tests need no PAM

    def authenticate(user, password):
        handle = pam.pam()
        # resetcreds=False: the portal opens no session and sets no credentials.
        return bool(handle.authenticate(user, password, service=service, resetcreds=False))

    return authenticate
