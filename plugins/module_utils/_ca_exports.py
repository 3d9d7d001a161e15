# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the client CA hands to the mail services, in ``<ca_dir>/export/``.

Private API (leading underscore), no Ansible import.

``postfix_relay_clientcerts``
    ``<SHA-256 fingerprint> <email>`` per certificate valid now, sorted: the
    source of Postfix's ``relay_clientcerts`` map. Postfix never reads CRLs,
    so revocation (and expiry) for SMTP is the removal of a line here.
``dovecot_ca_crl.pem``
    the CA certificate followed by the current CRL, Dovecot's client CA file.

Both are derived from the index and the CRL, rewritten only when their
content changes, mode 0600. ``.state`` beside them says which index
generation they follow (see ``Exports``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import stat
import tempfile

from ansible_collections.hardened.mailhost.plugins.module_utils._ca_common import (
    CAError,
    iso,
    make_private_dir,
    utcnow,
)

EXPORT_DIR = "export"
POSTFIX_EXPORT = "postfix_relay_clientcerts"
DOVECOT_EXPORT = "dovecot_ca_crl.pem"
STATE_FILE = ".state"


def postfix_map_text(rows):
    """The map from (email, device, fingerprint) rows in map order (``Index.listed``)."""
    return "".join("%s %s\n" % (fp, email) for email, _device, fp in rows)


def map_line(rec):
    return ("%s %s\n" % (rec["fingerprint_sha256"], rec["email"])).encode("utf-8")


def write_derived(path, data):
    """Atomic replace without fsync, for the exports only.

    They are derived from the index (which is fsynced) and rewritten by every
    later run, so they skip the two fsyncs that would double the cost of an
    issue on a busy disk. Mode 0600 is set before any content is written.
    """
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=os.path.dirname(path))
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            fd = None
            handle.write(data)
        os.rename(tmp, path)
        tmp = None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_if_changed(path, data):
    """Write ``data`` unless ``path`` already holds it with mode 0600; returns changed."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        with open(path, "rb") as handle:
            if handle.read() == data and stat.S_IMODE(os.stat(path).st_mode) == 0o600:
                return False
    except (IOError, OSError):
        pass
    write_derived(path, data)
    return True


class Exports:
    """The two export files of the CA in ``ca_dir`` (callers hold the CA lock).

    ``export/.state`` records the index generation the files were last made
    for and when the map would next change by the clock alone (an expiry or a
    start). While both hold, an issue or revoke edits the map in place (one
    line, found through the index, no scan of the records); otherwise the
    caller rebuilds everything from the index (``rebuild``): after a run that
    was killed half-way, after a migration, or once a listed certificate
    expired.
    """

    def __init__(self, ca_dir, ca_cert_path, crl_path):
        self.ca_dir = ca_dir
        self.folder = os.path.join(ca_dir, EXPORT_DIR)
        self.postfix_path = os.path.join(self.folder, POSTFIX_EXPORT)
        self.dovecot_path = os.path.join(self.folder, DOVECOT_EXPORT)
        self.state_path = os.path.join(self.folder, STATE_FILE)
        self.ca_cert_path = ca_cert_path
        self.crl_path = crl_path

    # ----------------------------------------------------------- state
    def state(self):
        """``{"generation": int, "map_until": iso or None}`` or ``None`` when unknown."""
        try:
            with open(self.state_path, "r") as handle:
                state = json.load(handle)
        except (IOError, OSError, ValueError):
            return None
        if not isinstance(state, dict) or not isinstance(state.get("generation"), int):
            return None
        return state

    def in_step(self, generation, now):
        """True when the files were made for ``generation`` and no listed certificate changed by time."""
        state = self.state()
        if state is None or state["generation"] != generation:
            return False
        until = state.get("map_until")
        return until is None or iso(now) < until

    def write_state(self, generation, map_until):
        make_private_dir(self.folder)
        write_if_changed(self.state_path, json.dumps(
            {"generation": generation, "map_until": map_until}, sort_keys=True))

    def forget_state(self):
        """Mark the files as not known to match the index (before a change is committed)."""
        try:
            os.unlink(self.state_path)
        except OSError:
            pass

    # ----------------------------------------------------------- files
    def _dovecot_text(self):
        with open(self.ca_cert_path, "rb") as handle:
            data = handle.read()
        try:
            with open(self.crl_path, "rb") as handle:
                return data + handle.read()
        except (IOError, OSError):
            raise CAError("no CRL in %s yet: run the CRL refresh first" % self.ca_dir)

    def write_postfix(self, idx, now=None):
        make_private_dir(self.folder)
        return write_if_changed(self.postfix_path, postfix_map_text(idx.listed(now or utcnow())))

    def write_dovecot(self):
        make_private_dir(self.folder)
        return write_if_changed(self.dovecot_path, self._dovecot_text())

    def rebuild(self, idx, now=None):
        """Both files from a full read of the index, and the state; returns whether a file changed."""
        now = now or utcnow()
        changed = self.write_postfix(idx, now)
        changed = self.write_dovecot() or changed
        self.write_state(idx.generation, idx.next_map_change(now))
        return changed

    def _read_map(self):
        try:
            with open(self.postfix_path, "rb") as handle:
                return handle.read()
        except (IOError, OSError):
            return None

    def add(self, idx, rec, now):
        """Put the line of the new record ``rec`` in its place; False when a rebuild is needed."""
        data = self._read_map()
        if data is None:
            return False
        line = map_line(rec)
        follower = idx.listed_after(rec["email"], rec["device"], rec["fingerprint_sha256"], now)
        if follower is None:
            at = len(data)
        else:
            at = _line_start(data, follower[0])
            if at is None:
                return False
        write_derived(self.postfix_path, data[:at] + line + data[at:])
        return True

    def remove(self, recs):
        """Drop the lines of ``recs`` (revoked now); False when one was not where it belongs."""
        data = self._read_map()
        if data is None:
            return False
        for rec in recs:
            at = _line_start(data, rec["fingerprint_sha256"])
            if at is None:
                continue  # not listed (expired or not yet valid): nothing to drop
            end = data.index(b"\n", at) + 1
            data = data[:at] + data[end:]
        write_derived(self.postfix_path, data)
        return True

    def update(self, idx, now, added=(), removed=(), crl_changed=False):
        """After a committed change: edit the map, refresh the Dovecot file, record the state.

        Falls back to ``rebuild`` when the files were not in step with the
        generation before this change (``generation - 1``) or an edit fails.
        """
        state = self.state()
        until = state.get("map_until") if state else None
        stamp = iso(now)
        quick = (state is not None and state["generation"] == idx.generation - 1
                 and (until is None or stamp < until))
        # Many new lines at once: one rebuild costs less than many edits.
        if quick and len(added) > 16:
            quick = False
        if quick:
            for rec in added:
                if rec["not_before"] > stamp:
                    until = rec["not_before"] if until is None else min(until, rec["not_before"])
                elif rec["not_after"] > stamp:
                    quick = self.add(idx, rec, now)
                    until = rec["not_after"] if until is None else min(until, rec["not_after"])
                if not quick:
                    break
        if quick and removed:
            quick = self.remove(removed)
        if not quick:
            return self.rebuild(idx, now)
        if crl_changed:
            self.write_dovecot()
        self.write_state(idx.generation, until)
        return True

    def current(self, idx, now=None):
        """True when both files hold what ``rebuild`` would write."""
        try:
            with open(self.postfix_path, "rb") as handle:
                if handle.read() != postfix_map_text(idx.listed(now or utcnow())).encode("utf-8"):
                    return False
            wanted = self._dovecot_text()
            with open(self.dovecot_path, "rb") as handle:
                return handle.read() == wanted
        except (IOError, OSError, CAError):
            return False


def _line_start(data, fingerprint):
    """Offset of the map line that starts with ``fingerprint``, or ``None``."""
    key = fingerprint.encode("ascii") + b" "
    at = data.find(key)
    while at != -1 and at != 0 and data[at - 1:at] != b"\n":
        at = data.find(key, at + 1)
    return None if at == -1 else at
