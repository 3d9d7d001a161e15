# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The client CA's index: ``index.sqlite3``, one row per certificate.

Private API (leading underscore), no Ansible import. The caller
(``_ca.CertificateAuthority``) holds the CA lock (``.lock``) around every
change, exactly as before; SQLite's own locking only keeps lock-free readers
(``info``, ``plan_*``) from seeing half a transaction.

Why SQLite (Python's standard ``sqlite3``) and not an append-only journal:
an issue or revoke must look up "the valid certificates of this e-mail and
device" and "this serial" without reading every record; SQLite gives those
lookups through B-tree indexes and commits one transaction per operation, so
the cost of an issue does not grow with the index. A journal would need the
same indexes rebuilt in memory on every run (each module run is a new
process) or a second file for them, plus compaction, i.e. a small database of
our own. The rollback journal (``journal_mode=DELETE``, ``synchronous=FULL``)
is chosen over WAL: after each commit ``index.sqlite3`` alone holds the whole
index (a plain file copy under the CA lock is a backup; WAL would keep
committed data in ``-wal``/``-shm`` side files that a copy can miss), readers
need no write access to the folder (WAL's ``-shm`` does), and a process killed
at any point leaves a hot journal that the next connection rolls back.

Records are dicts with the keys of ``FIELDS`` (the same as the ``index.json``
records of earlier versions). The table keeps issue order in ``seq``.

An ``index.json`` of earlier versions is read as it is by read-only callers
(into an in-memory database, nothing written) and converted by the first
change (``migrate``, under the CA lock): the new file is built beside it,
fsynced and renamed into place, then ``index.json`` is renamed to
``index.json.migrated`` (kept as a backup). A migration interrupted at any
point is finished by the next run; a migrated CA is not touched again.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import json
import os
import sqlite3
import tempfile
from urllib.parse import quote as _quote

from ansible_collections.hardened.mailhost.plugins.module_utils import _fileutil
from ansible_collections.hardened.mailhost.plugins.module_utils._ca_common import CAError, iso

INDEX_FORMAT = 2
LEGACY_FORMAT = 1
INDEX_FILE = "index.sqlite3"
LEGACY_FILE = "index.json"
LEGACY_BACKUP = "index.json.migrated"

FIELDS = ("serial", "email", "name", "device", "subject", "key_type", "issued_at", "not_before",
          "not_after", "fingerprint_sha256", "state", "revoked_at", "revocation_reason", "relay_only")
_COLUMNS = ", ".join(FIELDS)

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE certificates (
    seq INTEGER PRIMARY KEY,
    serial TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    device TEXT NOT NULL,
    subject TEXT NOT NULL,
    key_type TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    fingerprint_sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('valid', 'revoked')),
    revoked_at TEXT,
    revocation_reason TEXT,
    relay_only INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX certificates_identity ON certificates (email, device, fingerprint_sha256);
CREATE INDEX certificates_revoked ON certificates (serial) WHERE state = 'revoked';
"""
# No index on not_after: the planner would prefer it for "the next listed
# record after this one" and scan every valid record; the identity index
# answers that in one step. The expiry queries (next_map_change) run only when
# the exports are rebuilt, which reads every record anyway.

# The SQL that the Postfix map and the CRL are built from, shared with
# ``_ca_exports`` and ``_ca_crl``: listed = valid now, in map order.
LISTED_WHERE = "state = 'valid' AND not_before <= :now AND not_after > :now"


def _record(row):
    rec = dict(zip(FIELDS, row))
    rec["relay_only"] = bool(rec["relay_only"])
    return rec


def _row(rec):
    row = [rec.get(name) for name in FIELDS]
    row[-1] = 1 if rec.get("relay_only") else 0
    return row


class Index:
    """One open connection (read or write) on the index."""

    def __init__(self, conn):
        self.conn = conn

    # ------------------------------------------------------------ meta
    def meta(self, key, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def meta_int(self, key, default=0):
        return int(self.meta(key, default))

    def set_meta(self, key, value):
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    @property
    def crl_number(self):
        return self.meta_int("crl_number")

    @property
    def crl_next_update_days(self):
        return self.meta_int("crl_next_update_days", 30)

    @property
    def generation(self):
        """Counts the changes that the CRL or the exports must follow."""
        return self.meta_int("generation")

    def bump_generation(self):
        value = self.generation + 1
        self.set_meta("generation", value)
        return value

    def next_crl_number(self):
        value = self.crl_number + 1
        self.set_meta("crl_number", value)
        return value

    # ---------------------------------------------------------- records
    def find(self, serial):
        """The record of ``serial`` or ``None``."""
        row = self.conn.execute("SELECT %s FROM certificates WHERE serial = ?" % _COLUMNS,
                                (serial,)).fetchone()
        return None if row is None else _record(row)

    def of_device(self, email, device):
        """Every record of (``email``, ``device``), in issue order."""
        return [_record(row) for row in self.conn.execute(
            "SELECT %s FROM certificates WHERE email = ? AND device = ? ORDER BY seq" % _COLUMNS,
            (email, device))]

    def of_email(self, email):
        return [_record(row) for row in self.conn.execute(
            "SELECT %s FROM certificates WHERE email = ? ORDER BY seq" % _COLUMNS, (email,))]

    def all(self):
        return [_record(row) for row in self.conn.execute(
            "SELECT %s FROM certificates ORDER BY seq" % _COLUMNS)]

    def count(self):
        return self.conn.execute("SELECT COUNT(*) FROM certificates").fetchone()[0]

    def revoked(self):
        """(serial, revoked_at, revocation_reason) of every revoked certificate."""
        return self.conn.execute(
            "SELECT serial, revoked_at, revocation_reason FROM certificates "
            "WHERE state = 'revoked' ORDER BY serial").fetchall()

    def revoked_serials(self):
        return [row[0] for row in self.conn.execute(
            "SELECT serial FROM certificates WHERE state = 'revoked' ORDER BY serial")]

    def listed(self, now):
        """(email, device, fingerprint) of every certificate valid at ``now``, in map order."""
        return self.conn.execute(
            "SELECT email, device, fingerprint_sha256 FROM certificates WHERE " + LISTED_WHERE
            + " ORDER BY email, device, fingerprint_sha256", {"now": iso(now)}).fetchall()

    def listed_after(self, email, device, fingerprint, now):
        """The first (fingerprint, email) listed after this key in map order, or ``None``."""
        return self.conn.execute(
            "SELECT fingerprint_sha256, email FROM certificates WHERE "
            "(email, device, fingerprint_sha256) > (:e, :d, :f) AND " + LISTED_WHERE
            + " ORDER BY email, device, fingerprint_sha256 LIMIT 1",
            {"e": email, "d": device, "f": fingerprint, "now": iso(now)}).fetchone()

    def next_map_change(self, now):
        """When the map would next change without any issue or revoke (an expiry or a start)."""
        stamp = iso(now)
        ends = self.conn.execute("SELECT MIN(not_after) FROM certificates WHERE state = 'valid' "
                                 "AND not_after > ?", (stamp,)).fetchone()[0]
        starts = self.conn.execute("SELECT MIN(not_before) FROM certificates WHERE state = 'valid' "
                                   "AND not_before > ?", (stamp,)).fetchone()[0]
        found = [value for value in (ends, starts) if value]
        return min(found) if found else None

    def insert(self, rec):
        self.conn.execute("INSERT INTO certificates (%s) VALUES (%s)"
                          % (_COLUMNS, ", ".join("?" * len(FIELDS))), _row(rec))

    def mark_revoked(self, serial, reason, now):
        done = self.conn.execute(
            "UPDATE certificates SET state = 'revoked', revoked_at = ?, revocation_reason = ? "
            "WHERE serial = ?", (iso(now), reason, serial)).rowcount
        if done != 1:
            raise CAError("serial %s is not in the index" % serial)


def _connect(path, uri=None, readonly=False):
    target = uri or path
    try:
        conn = sqlite3.connect(target, timeout=60, isolation_level=None, uri=uri is not None)
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = FULL")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        return conn
    except sqlite3.Error as exc:
        raise CAError("CA index %s is corrupt or cannot be opened: %s" % (path, exc))


def _check(conn, path):
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise CAError("CA index %s is corrupt: %s" % (path, exc))
    if row is None or str(row[0]) != str(INDEX_FORMAT):
        raise CAError("CA index %s is corrupt or of an unknown format" % path)


def _fill(conn, crl_number, crl_next_update_days, records):
    conn.executescript(SCHEMA)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
        ("format", str(INDEX_FORMAT)), ("crl_number", str(int(crl_number))),
        ("crl_next_update_days", str(int(crl_next_update_days))), ("generation", "0")])
    conn.executemany("INSERT INTO certificates (%s) VALUES (%s)"
                     % (_COLUMNS, ", ".join("?" * len(FIELDS))), (_row(rec) for rec in records))
    conn.execute("COMMIT")


def read_legacy(path):
    """The records and settings of an ``index.json`` (format 1)."""
    try:
        with open(path, "r") as handle:
            index = json.load(handle)
    except ValueError as exc:
        raise CAError("CA index %s is corrupt: %s" % (path, exc))
    if not isinstance(index, dict) or index.get("format") != LEGACY_FORMAT \
            or not isinstance(index.get("certificates"), list):
        raise CAError("CA index %s is corrupt or of an unknown format" % path)
    for rec in index["certificates"]:
        missing = [name for name in FIELDS if name != "relay_only" and name not in rec] \
            if isinstance(rec, dict) else ["everything"]
        if missing:
            raise CAError("CA index %s is corrupt: a record lacks %s" % (path, ", ".join(missing)))
    return index


class IndexStore:
    """The index file of the CA folder ``ca_dir`` (and its predecessor ``index.json``)."""

    def __init__(self, ca_dir):
        self.ca_dir = ca_dir
        self.path = os.path.join(ca_dir, INDEX_FILE)
        self.legacy_path = os.path.join(ca_dir, LEGACY_FILE)
        self.backup_path = os.path.join(ca_dir, LEGACY_BACKUP)

    def exists(self):
        return os.path.isfile(self.path) or os.path.isfile(self.legacy_path)

    def needs_migration(self):
        return os.path.isfile(self.legacy_path)

    def create(self, crl_next_update_days):
        """A new, empty index (the caller holds the lock and checked nothing is there)."""
        self._build(0, crl_next_update_days, [])

    def _build(self, crl_number, crl_next_update_days, records):
        fd, tmp = tempfile.mkstemp(prefix=".%s." % INDEX_FILE, dir=self.ca_dir)
        try:
            os.fchmod(fd, 0o600)
            os.close(fd)
            conn = _connect(tmp)
            try:
                _fill(conn, crl_number, crl_next_update_days, records)
            finally:
                conn.close()
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.rename(tmp, self.path)
            tmp = None
            _fileutil.fsync_dir(self.ca_dir)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def migrate(self):
        """Convert ``index.json`` (caller holds the CA lock); returns True when it did something."""
        if not os.path.isfile(self.legacy_path):
            return False
        if not os.path.isfile(self.path):
            legacy = read_legacy(self.legacy_path)
            self._build(legacy.get("crl_number", 0), legacy.get("crl_next_update_days", 30),
                        legacy["certificates"])
        # Keep the old file as a backup; never overwrite an earlier one.
        backup, number = self.backup_path, 1
        while os.path.lexists(backup):
            number += 1
            backup = "%s.%d" % (self.backup_path, number)
        os.rename(self.legacy_path, backup)
        _fileutil.fsync_dir(self.ca_dir)
        return True

    @contextlib.contextmanager
    def reading(self):
        """An ``Index`` for reads; an unmigrated ``index.json`` is read into memory, not converted."""
        if not os.path.isfile(self.path) and os.path.isfile(self.legacy_path):
            legacy = read_legacy(self.legacy_path)
            conn = _connect(self.legacy_path, uri="file::memory:")
            _fill(conn, legacy.get("crl_number", 0), legacy.get("crl_next_update_days", 30),
                  legacy["certificates"])
        else:
            if not os.path.isfile(self.path):
                raise CAError("CA index %s is missing" % self.path)
            # A reader that may write can roll back the hot journal a killed
            # writer left; one that may not reads the file as it is.
            writable = os.access(self.path, os.W_OK) and os.access(self.ca_dir, os.W_OK)
            conn = _connect(self.path, uri="file:%s?mode=%s" % (_quote(self.path), "rw" if writable else "ro"),
                            readonly=True)
            _check(conn, self.path)
        try:
            conn.execute("BEGIN")
            yield Index(conn)
        except sqlite3.Error as exc:
            raise CAError("CA index %s cannot be read: %s" % (self.path, exc))
        finally:
            conn.close()

    @contextlib.contextmanager
    def writing(self):
        """An ``Index`` in one transaction, committed when the block ends without an error."""
        self.migrate()
        if not os.path.isfile(self.path):
            raise CAError("CA index %s is missing" % self.path)
        conn = _connect(self.path, uri="file:%s?mode=rw" % _quote(self.path))
        try:
            _check(conn, self.path)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield Index(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise CAError("CA index %s cannot be written: %s" % (self.path, exc))
        finally:
            conn.close()
