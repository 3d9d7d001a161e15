# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The client CA's index: ``index.json``, one record per certificate.

Private API (leading underscore), no Ansible import. The caller
(``_ca.CertificateAuthority``) holds the CA lock around every load-change-save.

An index is a dict: ``format``, ``crl_number``, ``crl_next_update_days`` and
``certificates`` (a list of records: serial, email, name, device, subject,
key_type, issued_at, not_before, not_after, fingerprint_sha256, state,
revoked_at, revocation_reason, relay_only). Records are never changed in
place; a change replaces the record, which lets ``save`` reuse the serialized
line of every record it wrote before, so an issue costs the same at 100 or
10,000 records.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.hardened.mailhost.plugins.module_utils import _fileutil
from ansible_collections.hardened.mailhost.plugins.module_utils._ca_common import CAError, iso

INDEX_FORMAT = 1


def new_index(crl_next_update_days):
    return {
        "format": INDEX_FORMAT,
        "crl_number": 0,
        "crl_next_update_days": int(crl_next_update_days),
        "certificates": [],
    }


def find(index, serial):
    """A copy of the record of ``serial``, or ``None``."""
    for rec in index["certificates"]:
        if rec["serial"] == serial:
            return dict(rec)
    return None


def mark_revoked(index, serial, reason, now):
    certs = index["certificates"]
    for position, rec in enumerate(certs):
        if rec["serial"] == serial:
            certs[position] = dict(rec, state="revoked", revoked_at=iso(now), revocation_reason=reason)
            return
    raise CAError("serial %s is not in the index" % serial)


def _copy(index):
    # Records are never changed in place (mark_revoked replaces them), so a
    # copy of the list is enough to keep the cached index intact.
    copy = dict(index)
    copy["certificates"] = list(index["certificates"])
    return copy


class IndexStore:
    """Reads and writes ``index.json``; the parsed index is cached until the file changes."""

    def __init__(self, path):
        self.path = path
        self._cache = None  # (stat signature, parsed index)
        self._line_cache = {}  # serial -> (index record, its serialized line)

    def _stat_sig(self):
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self):
        """A copy of the index that the caller may change and ``save``."""
        sig = self._stat_sig()
        if self._cache is not None and self._cache[0] == sig:
            return _copy(self._cache[1])
        try:
            with open(self.path, "r") as handle:
                index = json.load(handle)
        except ValueError as exc:
            raise CAError("CA index %s is corrupt: %s" % (self.path, exc))
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT \
                or not isinstance(index.get("certificates"), list):
            raise CAError("CA index %s is corrupt or of an unknown format" % self.path)
        self._cache = (sig, index)
        return _copy(index)

    def save(self, index):
        """Rewrite the index atomically (0600, fsynced)."""
        # One record per line: readable and diffable, and json's C encoder
        # stays in use (indent= would fall back to the slow pure-Python one).
        head = dict((k, v) for k, v in index.items() if k != "certificates")
        cache, lines = {}, []
        for rec in index["certificates"]:
            # The same record object has the same line (records are replaced,
            # never changed); a record read back from disk is a new object.
            hit = self._line_cache.get(rec["serial"])
            line = hit[1] if hit is not None and hit[0] is rec else json.dumps(rec, sort_keys=True)
            cache[rec["serial"]] = (rec, line)
            lines.append(line)
        self._line_cache = cache
        data = "%s, \"certificates\": [\n%s\n]}\n" % (
            json.dumps(head, sort_keys=True)[:-1], ",\n".join(lines))
        _fileutil.atomic_write(self.path, data, mode=0o600)
        self._cache = (self._stat_sig(), _copy(index))
