# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Postfix policy service: bind a client certificate to its own e-mail address.

Postfix can permit relaying by certificate fingerprint (``relay_clientcerts``)
but has no built-in way to tie the MAIL FROM address to the certificate
(``smtpd_sender_login_maps`` only knows SASL logins), and an access table may
not name another table in its result. This small service closes both gaps.
It is started by master(8) through ``spawn`` as ``/usr/bin/python3 <this
file>`` (one process per SMTP session, requests on stdin, answers on stdout)
and reads the same text map the CA exports: ``<SHA-256 fingerprint AA:BB:..>
<email>`` per valid certificate.

For a client whose certificate fingerprint is listed it answers:

* ``REJECT`` when the certificate did not verify against the configured CA
  (Postfix sends ``ccert_subject`` only for trusted certificates, so an
  expired certificate still listed in a stale map is refused here);
* ``REJECT`` when MAIL FROM is not the certificate's address;
* ``DUNNO`` otherwise, so the rest of the restriction list decides.

Clients without a listed certificate get ``DUNNO``: relaying for them is
decided by ``permit_tls_clientcerts``/``permit_sasl_authenticated``/``reject``.
The map file is read again whenever its modification time changes. A missing
or unreadable map is answered with ``DEFER`` (fail closed, temporary).

Postfix also asks it at the end of every message on 465/587
(``smtpd_end_of_data_restrictions``), when the queue ID exists. With
``--quota=QUOTA_FILE --quota-db=QUOTA_DB`` (the sender guard) it first counts
the message and its ``recipient_count`` against the identity's quotas
(``hm_sender_quota``, installed beside it) and answers ``450 4.7.1 ...
(hm-quota <rule> <identity>)`` beyond one, without counting it; a quota file
or counter database it cannot use gives ``DEFER`` (fail closed, temporary).
``--check-quota FILE`` checks a quota file and exits (0 good, 1 with the
reason). For an accepted message it then logs one line naming the identity,
under the syslog name ``postfix/hm-identity`` (the abuse alarm,
``hm_sender_guard``, reads these lines)::

    <queue ID>: identity=cert:<SHA-256 fingerprint> address=<email> client=<address>
    <queue ID>: identity=login:<SASL login> client=<address>

(For an app password the SASL login Postfix sees is the device's own login,
``<user>+<device>``: the dovecot role hands it back unchanged to Postfix, so
quotas, the identity line, the alarm and a suspension name one device.)

With a second argument, the role's ``sender_login.regexp`` (the table the
header From milter reads), it also binds an app-password login to its user's
addresses, in place of Postfix's ``reject_authenticated_sender_login_mismatch``
(which compares the login with the table's owners exactly and so cannot know
that ``alice+phone`` is one of alice's devices): a login ``<user>+<device>``
owns what the table gives ``<user>``; anything else is refused with the
reply Postfix gives (``553 5.7.1 <sender>: Sender address rejected: not
owned by user <login>``). A null sender is left to the next restriction,
as Postfix does.

A certificate wins over a login when a session has both (Postfix checked
both). The map argument may be ``-`` when no certificate relays (app
passwords only): then every certificate is unknown.

Runs on Python 3.8+ with the standard library only (and the sender login
table parser of the header From milter and the quota module, installed beside it).
"""

from __future__ import absolute_import, division, print_function

import os
import re
import sqlite3
import sys

# The header From milter's package lives beside this file on the host
# (both are installed whenever 465/587 are): one parser of the sender login table.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hm_header_from.tables import WatchedFile, lookup_owners, parse_regexp_map  # noqa: E402  pylint: disable=wrong-import-position
import hm_sender_quota  # noqa: E402  pylint: disable=wrong-import-position

FINGERPRINT_RE = re.compile(r"^[0-9A-F]{2}(?::[0-9A-F]{2}){31}$")


def parse_map(text):
    """``{FINGERPRINT: email}`` from the map text; blank lines and ``#`` comments skipped.

    Raises ValueError naming the line for anything malformed, so a damaged
    map is noticed instead of silently trusting part of it.
    """
    result = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or not FINGERPRINT_RE.match(fields[0].upper()) or "@" not in fields[1]:
            raise ValueError("line %d: expected '<SHA-256 fingerprint> <email>'" % number)
        result[fields[0].upper()] = fields[1]
    return result


def decide(attrs, certs):
    """Policy action (``action=`` value) for one request's attributes."""
    fingerprint = attrs.get("ccert_fingerprint", "").strip().upper()
    if not fingerprint or fingerprint not in certs:
        return "DUNNO"
    owner = certs[fingerprint]
    if not attrs.get("ccert_subject"):
        return "REJECT 5.7.1 Client certificate is not valid (expired or not from this CA)"
    sender = attrs.get("sender", "")
    if sender.lower() != owner.lower():
        return "REJECT 5.7.1 <%s>: Sender address not owned by this client certificate" % sender
    return "DUNNO"


def login_account(login):
    """``alice`` for ``alice+phone``, ``alice@example.org`` for ``alice+phone@example.org`` (lower case)."""
    local, at, domain = login.strip().lower().partition("@")
    return local.partition("+")[0] + at + domain


def decide_login(attrs, rules):
    """Policy action for the SASL login's claim on MAIL FROM (``rules``: the sender login table, or None)."""
    login = attrs.get("sasl_username", "").strip()
    sender = attrs.get("sender", "").strip()
    if rules is None or not login or not sender:
        return "DUNNO"
    owners = lookup_owners(rules, sender)
    if login.lower() in owners or login_account(login) in owners:
        return "DUNNO"
    return "553 5.7.1 not owned by user %s" % re.sub(r"\s", "?", login)


def sender_identity(attrs, certs):
    """``(identity, address)`` of the request's sender, ``("none", "")`` without one.

    ``cert:<fingerprint>`` for a listed certificate that verified, else
    ``login:<SASL login>``: the strings of the identity line, the quota and the alarm.
    """
    fingerprint = attrs.get("ccert_fingerprint", "").strip().upper()
    login = attrs.get("sasl_username", "").strip()
    if fingerprint and fingerprint in certs and attrs.get("ccert_subject"):
        return "cert:" + fingerprint, certs[fingerprint]
    if login:
        # A login name never holds white space (Dovecot refuses it); keep the line one token each.
        return "login:" + re.sub(r"\s", "?", login), ""
    return "none", ""


def end_of_message(attrs):
    return attrs.get("protocol_state", "").upper() == "END-OF-MESSAGE"


def identity(attrs, certs):
    """The identity line for an END-OF-MESSAGE request, or None for other stages."""
    if not end_of_message(attrs):
        return None
    queue_id = attrs.get("queue_id", "").strip() or "NOQUEUE"
    client = attrs.get("client_address", "").strip() or "-"
    who, address = sender_identity(attrs, certs)
    if address:
        return "%s: identity=%s address=%s client=%s" % (queue_id, who, address, client)
    return "%s: identity=%s client=%s" % (queue_id, who, client)


def recipient_count(attrs):
    try:
        return max(int(attrs.get("recipient_count", "0").strip() or 0), 0)
    except ValueError:
        return 0


class Quotas(object):
    """The per-identity quotas (hm_sender_quota): the quota file (a ``WatchedFile`` of
    ``hm_sender_quota.parse_quota``) and the counters."""

    def __init__(self, quota_file, store):
        self.quota_file = quota_file
        self.store = store

    def decide(self, attrs, certs):
        """Count an accepted message; the refusal (4xx) when over a quota, else DUNNO."""
        who, address = sender_identity(attrs, certs)
        if who == "none":
            return "DUNNO"
        limits = self.quota_file.value().limits_for(who, address)
        rule = self.store.charge(who, recipient_count(attrs), limits)
        return "DUNNO" if rule is None else hm_sender_quota.refusal(rule, who)


class NoMap:
    """Stands for the map when no certificate relays."""

    path = "-"

    @staticmethod
    def certs():
        return {}


class NoLoginMap:
    """Stands for the sender login table when no app password relays."""

    path = "-"

    @staticmethod
    def rules():
        return None


class LoginMapFile(WatchedFile):
    """The role's ``sender_login.regexp``, parsed again only when it changes."""

    def __init__(self, path):
        super().__init__(path, parse_regexp_map)

    def rules(self):
        return self.value()


class MapFile(WatchedFile):
    """The map file, parsed again only when it changes."""

    def __init__(self, path):
        super().__init__(path, parse_map)

    def certs(self):
        return self.value()


def serve(instream, outstream, mapfile, log=None, log_identity=None, loginmap=None, quotas=None):
    """Answer requests until EOF; returns the number of requests answered."""
    loginmap = loginmap or NoLoginMap()
    attrs = {}
    answered = 0
    for raw in instream:
        line = raw.rstrip("\r\n")
        if line:
            name, sep, value = line.partition("=")
            if sep:
                attrs[name] = value
            continue
        current = mapfile
        try:
            certs = mapfile.certs()
            action = decide(attrs, certs)
            if action == "DUNNO":
                current = loginmap
                action = decide_login(attrs, loginmap.rules())
            if action == "DUNNO" and quotas is not None and end_of_message(attrs):
                current = quotas
                action = quotas.decide(attrs, certs)
            line = identity(attrs, certs)
            if line and log_identity and action == "DUNNO":
                log_identity(line)
        except (OSError, ValueError, sqlite3.Error) as exc:
            if current is mapfile:
                what, action = "client certificate map %s" % mapfile.path, "DEFER 4.3.5 Client certificate map unavailable"
            elif current is loginmap:
                what, action = "sender login map %s" % loginmap.path, "DEFER 4.3.5 Sender login map unavailable"
            else:
                what = "sending quota (%s, %s)" % (quotas.quota_file.path, quotas.store.path)
                action = "DEFER 4.3.5 Sending quota unavailable"
            if log:
                log("%s: %s" % (what, exc))
        outstream.write("action=%s\n\n" % action)
        outstream.flush()
        answered += 1
        attrs = {}
    return answered


USAGE = ("usage: %s [--quota=QUOTA_FILE --quota-db=QUOTA_DB] MAP_FILE [SENDER_LOGIN_MAP]\n"
         "       %s --check-quota QUOTA_FILE\n")


def main(argv):
    prog = os.path.basename(argv[0])
    if len(argv) == 3 and argv[1] == "--check-quota":
        return hm_sender_quota.main([prog, "--check", argv[2]])
    options = dict(arg[2:].split("=", 1) for arg in argv[1:] if arg.startswith("--") and "=" in arg)
    args = [arg for arg in argv[1:] if not arg.startswith("--")]
    flags = [arg for arg in argv[1:] if arg.startswith("--")]
    if (len(args) not in (1, 2) or len(flags) != len(options) or set(options) - {"quota", "quota-db"}
            or len(options) == 1):
        sys.stderr.write(USAGE % (prog, prog))
        return 2

    # spawn(8) connects stdout (and stderr) to smtpd: log through syslog only.
    import syslog

    def log(message):
        syslog.openlog("postfix/ccert_sender_policy", 0, syslog.LOG_MAIL)
        syslog.syslog(syslog.LOG_WARNING, message)

    def log_identity(message):
        syslog.openlog("postfix/hm-identity", 0, syslog.LOG_MAIL)
        syslog.syslog(syslog.LOG_INFO, message)

    mapfile = NoMap() if args[0] == "-" else MapFile(args[0])
    loginmap = LoginMapFile(args[1]) if len(args) == 2 else NoLoginMap()
    quotas = None
    if options:
        quotas = Quotas(WatchedFile(options["quota"], hm_sender_quota.parse_quota),
                        hm_sender_quota.QuotaStore(options["quota-db"]))
    try:
        serve(sys.stdin, sys.stdout, mapfile, log, log_identity, loginmap, quotas)
    finally:
        if quotas is not None:
            quotas.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
