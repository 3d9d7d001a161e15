# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-identity sending quotas for 465/587, counted in SQLite (standard library only).

The policy service (``ccert_sender_policy.py``) asks :meth:`QuotaStore.charge`
once per message at the end of DATA, when Postfix hands it the number of
accepted recipients (``recipient_count``). One identity is one certificate
(``cert:<SHA-256 fingerprint>``) or one app-password login
(``login:<user>+<device>``), the same strings as the identity line and the
abuse alarm (``hm_sender_guard``) use.

Quotas (the JSON file the role writes, checked with ``--check FILE``)::

    {"defaults": {"messages_per_hour": 100, "messages_per_day": 500,
                  "recipients_per_hour": 200, "recipients_per_day": 1000},
     "users": {"carol": {"messages_per_hour": 4}}}

A user's override applies to each of the user's certificates and app
passwords separately (the user of a certificate is the local part of its
address, of a login the part before ``+`` or ``@``); missing keys take the
defaults.

Windows: each identity has an hour and a day window that start with its
first message and end one period later (then the next message starts a new
one), as postfwd's ``rate()`` did. A message passes when, counted, it keeps
every window within its limits; otherwise it is refused with::

    450 4.7.1 Sending quota exceeded, try again later (hm-quota <rule> <identity>)

(``<rule>`` is ``messages-per-hour``, ``messages-per-day``,
``recipients-per-hour`` or ``recipients-per-day``; the alarm's
``events.QUOTA_RE`` reads this marker). **A refused message is not counted**:
it was not sent, and a client retrying a refused message does not push its
own window further; the alarm sees each refusal in the log instead.

Counters: one SQLite file (WAL journal, ``busy_timeout``) shared by every
policy process master(8) spawns (one per SMTP session, several at once). One
``BEGIN IMMEDIATE`` transaction per message reads, checks and increments, so
two sessions of one identity cannot both take the last message of a quota.
The file survives a restart of Postfix and a reboot; with
``synchronous=NORMAL`` a power cut may lose the last few counts, never
corrupt the file. Writers queue on ``flock`` of a lock file beside the
database before ``BEGIN IMMEDIATE``: the kernel wakes the next one as soon as
the lock is free, where SQLite's own busy handler would sleep 1, 2, 5, 10 ...
ms between retries (measured: +6 ms at the end of DATA with 20 sessions,
without the lock file; see docs/benchmarks/policy.md). Windows that have ended are deleted by the first message of
each process and then every ``PRUNE_EVERY`` messages (a few rows per
identity, so this is cheap).
"""

from __future__ import absolute_import, division, print_function

import fcntl
import json
import os
import sqlite3
import sys
import time

KEYS = ("messages_per_hour", "messages_per_day", "recipients_per_hour", "recipients_per_day")
PERIODS = (("hour", 3600), ("day", 86400))
MAX_LIMIT = 999999999
PRUNE_EVERY = 500
BUSY_TIMEOUT_MS = 5000
REFUSAL = "450 4.7.1 Sending quota exceeded, try again later (hm-quota %s %s)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    identity   TEXT    NOT NULL,
    period     INTEGER NOT NULL,
    start      REAL    NOT NULL,
    messages   INTEGER NOT NULL,
    recipients INTEGER NOT NULL,
    PRIMARY KEY (identity, period)
) WITHOUT ROWID
"""


class QuotaError(ValueError):
    """A malformed quota file (the message names the problem)."""


def _limits(value, where, partial):
    if not isinstance(value, dict):
        raise QuotaError("%s must be an object of %s" % (where, ", ".join(KEYS)))
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise QuotaError("%s: unknown key(s) %s (known: %s)" % (where, ", ".join(unknown), ", ".join(KEYS)))
    missing = [key for key in KEYS if key not in value]
    if missing and not partial:
        raise QuotaError("%s: missing %s" % (where, ", ".join(missing)))
    for key, limit in value.items():
        # bool is an int in Python: refuse it by name.
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise QuotaError("%s.%s must be a whole number from 1 to %d (got %s)"
                             % (where, key, MAX_LIMIT, json.dumps(limit)))
    return dict(value)


def parse_quota(text):
    """``Quota`` from the JSON text; raises QuotaError naming what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise QuotaError("not valid JSON: %s" % exc)
    if not isinstance(data, dict):
        raise QuotaError("the quota file must hold a JSON object with 'defaults' and 'users'")
    # Keys starting with "_" are comments (the role names itself in "_comment").
    unknown = sorted(key for key in set(data) - {"defaults", "users"} if not key.startswith("_"))
    if unknown:
        raise QuotaError("unknown top-level key(s) %s (known: defaults, users)" % ", ".join(unknown))
    defaults = _limits(data.get("defaults"), "defaults", partial=False)
    users = data.get("users", {})
    if not isinstance(users, dict):
        raise QuotaError("users must be an object of user name to limits")
    merged = {}
    for user, override in users.items():
        if not user or user != user.lower() or any(c.isspace() or c in "+@" for c in user):
            raise QuotaError("users: %s is not a user name (lower case, no '+', '@' or spaces)" % json.dumps(user))
        limits = dict(defaults)
        limits.update(_limits(override, "users.%s" % user, partial=True))
        merged[user] = limits
    return Quota(defaults, merged)


def load_quota(path):
    """``Quota`` from a file; OSError or QuotaError (with the path) when it cannot be used."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return parse_quota(text)
    except QuotaError as exc:
        raise QuotaError("%s: %s" % (path, exc))


def user_of(identity, address=""):
    """The user whose override applies: ``alice`` for ``login:alice+phone`` or a certificate of alice@..."""
    kind, dummy, name = identity.partition(":")
    if kind == "cert":
        name = address
    return name.lower().partition("@")[0].partition("+")[0]


class Quota(object):
    """The limits: defaults and per-user merged limits."""

    def __init__(self, defaults, users):
        self.defaults = defaults
        self.users = users

    def limits_for(self, identity, address=""):
        return self.users.get(user_of(identity, address), self.defaults)


class QuotaStore(object):
    """The counters in one SQLite file, opened on first use."""

    def __init__(self, path, clock=time.time):
        self.path = path
        self.clock = clock
        self._db = None
        self._lock = None
        self._until_prune = 0

    def _connect(self):
        if self._db is None:
            # The file and its -wal/-shm companions: the service user's only.
            old = os.umask(0o077)
            try:
                lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
                try:
                    db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000.0, isolation_level=None)
                except Exception:
                    os.close(lock)
                    raise
                try:
                    db.execute("PRAGMA busy_timeout = %d" % BUSY_TIMEOUT_MS)
                    if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                        raise sqlite3.OperationalError("cannot switch %s to WAL" % self.path)
                    db.execute("PRAGMA synchronous = NORMAL")
                    db.execute(SCHEMA)
                except Exception:
                    db.close()
                    os.close(lock)
                    raise
            finally:
                os.umask(old)
            self._db, self._lock = db, lock
        return self._db

    def close(self):
        if self._db is not None:
            self._db.close()
            os.close(self._lock)
            self._db, self._lock = None, None

    def charge(self, identity, recipients, limits):
        """Count one message of ``recipients`` for ``identity`` unless a quota is reached.

        Returns None when counted, else the rule refused (``messages-per-hour``
        ...); a refused message changes nothing. Raises sqlite3.Error or
        OSError when the counters cannot be used.
        """
        recipients = max(int(recipients), 0)
        now = self.clock()
        db = self._connect()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            return self._charge(db, identity, recipients, limits, now)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _charge(self, db, identity, recipients, limits, now):
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._until_prune <= 0:
                db.execute("DELETE FROM windows WHERE start + period <= ?", (now,))
                self._until_prune = PRUNE_EVERY
            self._until_prune -= 1
            rows = dict((row[0], row[1:]) for row in db.execute(
                "SELECT period, start, messages, recipients FROM windows WHERE identity = ?", (identity,)))
            updates = []
            for name, seconds in PERIODS:
                start, messages, rcpts = rows.get(seconds, (now, 0, 0))
                if start + seconds <= now or start > now + 60:  # ended (or a clock set back far)
                    start, messages, rcpts = now, 0, 0
                if messages + 1 > limits["messages_per_" + name]:
                    db.execute("ROLLBACK")
                    return "messages-per-" + name
                if rcpts + recipients > limits["recipients_per_" + name]:
                    db.execute("ROLLBACK")
                    return "recipients-per-" + name
                updates.append((identity, seconds, start, messages + 1, rcpts + recipients))
            db.executemany("INSERT OR REPLACE INTO windows (identity, period, start, messages, recipients)"
                           " VALUES (?, ?, ?, ?, ?)", updates)
            db.execute("COMMIT")
            return None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def counters(self):
        """``{identity: {"hour": {...}, "day": {...}}}`` of the windows still running."""
        now = self.clock()
        result = {}
        names = dict((seconds, name) for name, seconds in PERIODS)
        for identity, period, start, messages, rcpts in self._connect().execute(
                "SELECT identity, period, start, messages, recipients FROM windows ORDER BY identity, period"):
            if start + period > now:
                result.setdefault(identity, {})[names.get(period, str(period))] = {
                    "messages": messages, "recipients": rcpts, "ends": int(start + period)}
        return result


def refusal(rule, identity):
    """The reply for a refused message (the alarm parses its marker)."""
    return REFUSAL % (rule, identity)


def main(argv):
    usage = "usage: %s --check QUOTA_FILE | --show QUOTA_DB\n" % os.path.basename(argv[0])
    if len(argv) != 3 or argv[1] not in ("--check", "--show"):
        sys.stderr.write(usage)
        return 2
    if argv[1] == "--check":
        try:
            quota = load_quota(argv[2])
        except (OSError, QuotaError) as exc:
            sys.stderr.write("quota file rejected: %s\n" % exc)
            return 1
        sys.stdout.write("quota file ok: defaults %s, %d user override(s)\n"
                         % (json.dumps(quota.defaults, sort_keys=True), len(quota.users)))
        return 0
    if not os.path.exists(argv[2]):
        sys.stderr.write("no quota counters at %s\n" % argv[2])
        return 1
    # As root, read as the file's owner: a -wal or -shm file root made would
    # lock the policy service out of its own counters.
    st = os.stat(argv[2])
    if os.geteuid() == 0 and st.st_uid != 0:
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)
    store = QuotaStore(argv[2])
    try:
        json.dump(store.counters(), sys.stdout, indent=1, sort_keys=True)
    finally:
        store.close()
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
