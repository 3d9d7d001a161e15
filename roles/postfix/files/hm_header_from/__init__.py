# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Header From: binding for authenticated submissions (a milter for Postfix).

Postfix binds the envelope sender (MAIL FROM) to the authenticated identity:
the ``ccert_sender_policy`` service, for client certificates and for
app-password (SASL) logins (``<user>+<device>`` owns what ``<user>`` owns). Neither looks at
the message header, so a device could still show anyone in ``From:``. This
package makes the same decision for the header, from the same maps:

* ``tables``   — reads the maps the envelope checks already use (the CA's
  ``relay_clientcerts`` export and the ``sender_login.regexp`` map) and the
  host's mail domains; no second source of truth.
* ``decision`` — parses the ``From:`` header(s) and says accept, reject or
  tempfail. Plain Python, no milter import: unit-tested on its own.
* ``milter``   — the thin glue to Debian's pymilter (``python3-milter``).

Run as ``python3 -m hm_header_from --socket unix:PATH ...`` (see ``__main__``).
"""
