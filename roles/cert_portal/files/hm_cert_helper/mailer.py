# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mail to a user's outside address through the host's own Postfix."""

from __future__ import absolute_import, division, print_function

import email.message
import email.utils
import smtplib


class MailError(Exception):
    pass


class Mailer:
    def __init__(self, host="127.0.0.1", port=25, mail_from="", portal_url="", host_name=""):
        self.host, self.port = host, port
        self.mail_from, self.portal_url, self.host_name = mail_from, portal_url, host_name

    def _send(self, rcpt, subject, body):
        msg = email.message.EmailMessage()
        msg["From"] = self.mail_from
        msg["To"] = rcpt
        msg["Subject"] = subject
        msg["Date"] = email.utils.formatdate(localtime=False)
        msg["Message-ID"] = email.utils.make_msgid(domain=self.mail_from.rpartition("@")[2] or None)
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=20) as client:
                client.send_message(msg, from_addr=self.mail_from, to_addrs=[rcpt])
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError("%s: %s" % (type(exc).__name__, exc))

    def send_code(self, rcpt, code, user, address, minutes):
        body = (
            "Your one-time code for the certificate portal of %s:\n\n"
            "    %s\n\n"
            "It works once, for %d minutes. It was asked for by a login as %s from %s.\n"
            "If that was not you, someone knows your password: change it and tell the\n"
            "administrator. Nobody from the portal will ever ask you for this code.\n"
            % (self.host_name or self.portal_url, code, minutes, user, address))
        self._send(rcpt, "Your certificate portal code", body)

    def send_reminder(self, rcpt, device, serial, not_after, days_left):
        body = (
            "The mail certificate of your device %r (serial %s) expires on %s,\n"
            "in %d days. After that the device can no longer send or read mail.\n\n"
            "Issue a new one for that device (tick 'replace') at\n\n    %s\n"
            % (device, serial, not_after, days_left, self.portal_url))
        self._send(rcpt, "Your mail certificate for %s expires in %d days" % (device, days_left), body)
