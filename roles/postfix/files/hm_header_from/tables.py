# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The maps the envelope checks use, read for the header check.

* the CA's export ``relay_clientcerts``: ``<SHA-256 fingerprint> <email>`` per
  valid certificate (the file ``ccert_sender_policy.py`` and Postfix's
  ``relay_clientcerts`` read);
* ``sender_login.regexp``: Postfix's ``smtpd_sender_login_maps``, a regexp
  table ``/pattern/ owner, owner...`` that the role writes;
* the host's mail domains (given on the command line by the systemd unit,
  from the same role variable that writes the regexp table).

Files are read again when their modification time, size or inode changes.
A missing or damaged file raises OSError/ValueError: the caller fails closed.
"""

from __future__ import absolute_import, division, print_function

import os
import re
import threading

FINGERPRINT_RE = re.compile(r"^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}$")
# One rule of a Postfix regexp table as the role writes it: /pattern/flags result
RULE_RE = re.compile(r"^/(?P<pattern>(?:[^/\\]|\\.)+)/(?P<flags>[A-Za-z]*)\s+(?P<result>\S.*)$")
GROUP_REF_RE = re.compile(r"\$(?:\{(\d)\}|(\d))")


def parse_clientcerts(text):
    """The set of (lower-case) addresses with a valid certificate in the CA's export."""
    owners = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or not FINGERPRINT_RE.match(fields[0]) or "@" not in fields[1]:
            raise ValueError("relay_clientcerts line %d: expected '<SHA-256 fingerprint> <email>'" % number)
        owners.add(fields[1].lower())
    return owners


def parse_regexp_map(text):
    """``[(compiled pattern, result template)]`` of a Postfix regexp table.

    Only what the role writes is accepted: ``/pattern/`` with the flags ``i``
    (Postfix's default, case-insensitive) or ``I``, and a result that may use
    ``$n``/``${n}``. Anything else (if/endif blocks, negation, other flags)
    raises ValueError rather than being half-understood.
    """
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = RULE_RE.match(stripped)
        if not match or set(match.group("flags")) - set("iI"):
            raise ValueError("sender login map line %d is not a '/pattern/ result' rule" % number)
        # Postfix matches case-insensitively unless the flag I is given.
        flags = 0 if "I" in match.group("flags") else re.IGNORECASE
        try:
            pattern = re.compile(match.group("pattern"), flags)
        except re.error as exc:
            raise ValueError("sender login map line %d: %s" % (number, exc))
        rules.append((pattern, match.group("result")))
    return rules


def lookup_owners(rules, address):
    """The owners (lower-case) the first matching rule gives for ``address``, or []."""
    for pattern, template in rules:
        match = pattern.search(address)
        if match:
            def group(ref, match=match):
                return match.group(int(ref.group(1) or ref.group(2))) or ""
            result = GROUP_REF_RE.sub(group, template)
            return [owner.lower() for owner in re.split(r"[\s,]+", result) if owner]
    return []


class WatchedFile:
    """A file parsed again only when it changes (also the policy service's maps and quota file)."""

    def __init__(self, path, parse):
        self.path = path
        self._parse = parse
        self._sig = None
        self._value = None
        # libmilter runs one thread per SMTP session.
        self._lock = threading.Lock()

    def value(self):
        with self._lock:
            st = os.stat(self.path)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            if sig != self._sig:
                with open(self.path, encoding="utf-8") as handle:
                    self._value = self._parse(handle.read())
                self._sig = sig
            return self._value


class Tables:
    """What :func:`hm_header_from.decision.decide` asks about identities."""

    def __init__(self, clientcerts_path, sender_login_path, domains):
        self._certs = WatchedFile(clientcerts_path, parse_clientcerts) if clientcerts_path else None
        self._logins = WatchedFile(sender_login_path, parse_regexp_map) if sender_login_path else None
        self.domains = frozenset(d.lower().rstrip(".") for d in domains)
        if not self.domains:
            raise ValueError("no mail domain given")

    def cert_is_listed(self, address):
        """True when a valid certificate for ``address`` is in the CA's map."""
        if self._certs is None:
            return False
        return address.lower() in self._certs.value()

    def sasl_owns(self, login, address):
        """True when the sender login map gives ``login``, or the user of the
        device login ``<user>+<device>``, as an owner of ``address``."""
        if self._logins is None:
            return False
        owners = lookup_owners(self._logins.value(), address)
        local, at, domain = login.strip().lower().partition("@")
        return login.lower() in owners or (local.partition("+")[0] + at + domain) in owners
