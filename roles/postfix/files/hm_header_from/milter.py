# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Glue between Postfix's milter protocol (Debian's pymilter) and :mod:`decision`.

Only the From: headers and three macros are looked at; the verdict is given
at the end of the headers, before the body is sent.
"""

from __future__ import absolute_import, division, print_function

import sys

import Milter  # Debian: python3-milter

from hm_header_from.decision import decide

MILTER_NAME = "hm-header-from"


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value or ""


def _log(message):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def make_milter_class(tables, log=_log):
    """A pymilter class bound to ``tables`` (one instance per SMTP session)."""

    class HeaderFromMilter(Milter.Base):
        def __init__(self):
            super(HeaderFromMilter, self).__init__()
            self._reset()

        def _reset(self):
            self.from_values = []
            self.cert_address = None
            self.sasl_login = None

        def envfrom(self, mailfrom, *params):
            self._reset()
            # {cert_subject}: the CN of a client certificate that verified
            # (HELO-stage macro); {auth_authen}: the SASL login (MAIL stage).
            self.cert_address = _text(self.getsymval("{cert_subject}"))
            self.sasl_login = _text(self.getsymval("{auth_authen}"))
            return Milter.CONTINUE

        def header(self, field, value):
            if _text(field).strip().lower() == "from":
                self.from_values.append(_text(value))
            return Milter.CONTINUE

        def eoh(self):
            verdict = decide(self.from_values, self.cert_address, self.sasl_login, tables)
            if verdict.action == "accept":
                return Milter.CONTINUE
            queue_id = _text(self.getsymval("i")) or "-"
            log("%s: %s: %s (certificate=%s, login=%s)" % (
                queue_id, verdict.action, verdict.text, self.cert_address or "-", self.sasl_login or "-"))
            # libmilter drops a reply text with a single '%'.
            self.setreply(verdict.code, verdict.enhanced, verdict.text.replace("%", "%%"))
            return Milter.REJECT if verdict.action == "reject" else Milter.TEMPFAIL

        def eom(self):
            return Milter.CONTINUE

    return HeaderFromMilter


def run(socket, tables, timeout=30):
    """Serve Postfix on ``socket`` (``unix:/path``) until stopped."""
    Milter.factory = make_milter_class(tables)
    # The milter never changes a message.
    Milter.set_flags(0)
    _log("%s listening on %s" % (MILTER_NAME, socket))
    Milter.runmilter(MILTER_NAME, socket, timeout)
