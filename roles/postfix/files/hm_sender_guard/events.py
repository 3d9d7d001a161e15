# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-identity counters from Postfix's log lines (pure functions, no I/O)."""

from __future__ import absolute_import, division, print_function

import collections
import re

IDENTITY_TAG = "postfix/hm-identity"
IDENTITY_RE = re.compile(r"^(?P<qid>[0-9A-Za-z]+): identity=(?P<identity>(?:cert|login):\S+)"
                         r"(?: address=(?P<address>\S+))?")
DELIVERY_RE = re.compile(r"^(?P<qid>[0-9A-Za-z]+): to=<(?P<rcpt>[^>]*)>,.*\bstatus=(?P<status>sent|bounced|deferred|expired)\b")
# The marker of a quota refusal (hm_sender_quota.REFUSAL, answered by the policy service).
QUOTA_RE = re.compile(r"\(hm-quota (?P<rule>[a-z-]+) (?P<identity>(?:cert|login):[^\s)]+)\)")

Entry = collections.namedtuple("Entry", "time tag message")
# time: seconds since the epoch (float); tag: SYSLOG_IDENTIFIER; message: the text


class Stats(object):
    """What one identity did within the window."""

    def __init__(self, identity):
        self.identity = identity
        self.address = ""
        self.messages = 0
        self.bounced = 0
        self.deferred = 0
        self.quota = 0
        self.quota_rules = collections.Counter()
        self.domains = collections.Counter()

    def as_dict(self):
        return {"identity": self.identity, "address": self.address, "messages": self.messages,
                "bounced": self.bounced, "deferred": self.deferred, "quota": self.quota,
                "quota_rules": dict(self.quota_rules), "top_domains": self.domains.most_common(5)}


def identity_of_lines(entries):
    """``{queue ID: (identity, address)}`` from the identity lines among ``entries``."""
    result = {}
    for entry in entries:
        if entry.tag != IDENTITY_TAG:
            continue
        match = IDENTITY_RE.match(entry.message)
        if match:
            result[match.group("qid")] = (match.group("identity"), match.group("address") or "")
    return result


def count(entries, since, queue_ids=None, ignore_before=None):
    """``{identity: Stats}`` for the entries at or after ``since``.

    ``queue_ids`` maps queue IDs to identities for messages accepted before
    the window (a deferral now may belong to a message from an hour ago);
    ``ignore_before`` (a dict, or a function of the identity) gives the time
    before which an identity's events do not count (when it was resumed).
    """
    owners = dict(queue_ids or {})
    owners.update(identity_of_lines(entries))
    if not callable(ignore_before):
        resumed = dict(ignore_before or {})

        def ignore_before(identity):
            return resumed.get(identity, 0)
    stats = {}

    def get(identity, when):
        if when < since or when < ignore_before(identity):
            return None
        if identity not in stats:
            stats[identity] = Stats(identity)
        return stats[identity]

    for entry in entries:
        if entry.tag == IDENTITY_TAG:
            match = IDENTITY_RE.match(entry.message)
            if match:
                item = get(match.group("identity"), entry.time)
                if item is not None:
                    item.messages += 1
                    item.address = match.group("address") or item.address
            continue
        match = DELIVERY_RE.match(entry.message)
        if match:
            owner = owners.get(match.group("qid"))
            if owner is None or match.group("status") == "sent":
                continue
            item = get(owner[0], entry.time)
            if item is None:
                continue
            item.address = item.address or owner[1]
            if match.group("status") == "bounced":
                item.bounced += 1
            else:
                item.deferred += 1
            item.domains[match.group("rcpt").rpartition("@")[2].lower() or "(none)"] += 1
            continue
        match = QUOTA_RE.search(entry.message)
        if match and " reject: " in entry.message:
            item = get(match.group("identity"), entry.time)
            if item is not None:
                item.quota += 1
                item.quota_rules[match.group("rule")] += 1
    return stats


def crossed(stats, thresholds):
    """The reasons (list of text) why ``stats`` calls for a suspension, or []."""
    reasons = []
    window = thresholds["window_seconds"]
    if stats.bounced >= thresholds["max_bounced"]:
        reasons.append("%d bounced deliveries in %d s (threshold %d)" % (stats.bounced, window, thresholds["max_bounced"]))
    if stats.deferred >= thresholds["max_deferred"]:
        reasons.append("%d deferred deliveries in %d s (threshold %d)" % (stats.deferred, window, thresholds["max_deferred"]))
    if thresholds["suspend_on_quota"] and stats.quota > 0:
        reasons.append("quota exceeded %d times in %d s (%s)" % (
            stats.quota, window, ", ".join("%s: %d" % item for item in sorted(stats.quota_rules.items()))))
    return reasons
