# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which header From: addresses an authenticated identity may use.

An identity is what Postfix authenticated in this SMTP session:

* ``cert_address`` — the e-mail address (CN) of a client certificate that
  verified against the collection's CA (Postfix's ``{cert_subject}`` macro,
  sent only for trusted certificates). It counts only while a certificate for
  that address is in the CA's map of valid certificates, as for relaying.
* ``sasl_login`` — the app-password login Dovecot confirmed (``{auth_authen}``).

When both are present both must own every address, as the envelope checks
require of MAIL FROM. A certificate owns exactly its own address (the CA
issued it in a served domain, or for another domain only when marked
relay-only); an app-password login owns only addresses in the host's mail
domains. Anything that cannot be read with certainty (no From:,
two From: headers, an unparsable value, an encoded word or a foreign address
in a display name) is refused: the sender's own mail program never produces
these, a forger does.
"""

from __future__ import absolute_import, division, print_function

import collections
import re
from email import policy as email_policy
from email.errors import HeaderParseError

Verdict = collections.namedtuple("Verdict", "action code enhanced text")
# action: "accept", "reject" (5xx) or "tempfail" (4xx)

ACCEPT = Verdict("accept", None, None, None)

# Something in a display name a reader would take for an address.
ADDRESS_LIKE = re.compile(r"[^\s<>\"',;:()]+@[^\s<>\"',;:()]+\.[^\s<>\"',;:()]+")


def reject(text):
    return Verdict("reject", "550", "5.7.1", text)


def tempfail(text):
    return Verdict("tempfail", "451", "4.3.5", text)


class FromHeaderError(ValueError):
    """The From: header cannot be read with certainty."""


def from_addresses(values):
    """``[(display name, address)]`` from the values of the message's From: headers.

    ``values`` is the list of raw header values in message order. Display
    names come back with encoded words decoded. Raises FromHeaderError for no
    From:, more than one From: header, an empty or unparsable value, a group,
    or an address without a domain.
    """
    if not values:
        raise FromHeaderError("Message has no From: header")
    if len(values) > 1:
        raise FromHeaderError("Message has %d From: headers" % len(values))
    # Unfold (RFC 5322 2.2.3): a line break followed by white space is not content.
    raw = re.sub(r"\r?\n(?=[ \t])", "", values[0])
    if "\x00" in raw:
        raise FromHeaderError("From: header holds a NUL character")
    try:
        header = email_policy.default.header_factory("From", raw)
    except (HeaderParseError, IndexError, TypeError, ValueError) as exc:
        raise FromHeaderError("From: header cannot be parsed (%s)" % exc)
    if header.defects:
        raise FromHeaderError("From: header is malformed (%s)" % header.defects[0].__class__.__name__)
    result = []
    for group in header.groups:
        if group.display_name is not None:
            raise FromHeaderError("From: header holds a group")
        for address in group.addresses:
            if not address.username or not address.domain:
                raise FromHeaderError("From: header holds an incomplete address")
            result.append((address.display_name or "", "%s@%s" % (address.username, address.domain)))
    if not result:
        raise FromHeaderError("From: header holds no address")
    return result


def _domain(address):
    return address.rpartition("@")[2].lower().rstrip(".")


def decide(from_values, cert_address, sasl_login, tables):
    """A :class:`Verdict` for one message.

    ``tables`` answers ``cert_is_listed(address)``, ``sasl_owns(login, address)``
    and ``domains`` (lower-case set); it raises OSError/ValueError when a map
    cannot be read, which becomes a temporary failure (fail closed).
    """
    cert_address = (cert_address or "").strip()
    sasl_login = (sasl_login or "").strip()
    try:
        domains = tables.domains
        cert_counts = bool(cert_address) and tables.cert_is_listed(cert_address)
        if not cert_counts and not sasl_login:
            return reject("No authenticated identity for this message")
        try:
            addresses = from_addresses(from_values)
        except FromHeaderError as exc:
            return reject(str(exc))

        owned = []
        for _name, address in addresses:
            # A listed certificate owns exactly its own address; the CA issued
            # it for a served domain or, marked relay-only, for another one.
            if cert_counts and address.lower() != cert_address.lower():
                return reject("<%s>: header From address not owned by this client certificate" % address)
            if not cert_counts and _domain(address) not in domains:
                return reject("<%s>: header From address is not in a domain of this host" % address)
            if sasl_login and not tables.sasl_owns(sasl_login, address):
                return reject("<%s>: header From address not owned by user %s" % (address, sasl_login))
            owned.append(address.lower())

        # A display name is what most mail programs show: it may not name an
        # address the identity does not own ("ceo@example.org" <me@example.org>).
        for name, _address in addresses:
            for shown in ADDRESS_LIKE.findall(name):
                if shown.lower() not in owned:
                    return reject("Display name of the header From shows another address (%s)" % shown)
    except (OSError, ValueError) as exc:
        return tempfail("Sender maps unavailable: %s" % exc)
    return ACCEPT
