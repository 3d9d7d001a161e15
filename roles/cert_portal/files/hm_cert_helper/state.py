# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the helper remembers between requests, in memory only.

One-time codes (stored as salted SHA-256, compared in constant time, single
use, limited life and tries, resends rate-limited), sessions that end after
an idle time, and failure counters per user and per source address. A
restart of the helper forgets all of it: users log in again.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import hmac
import secrets
import threading
import time


class CodeError(Exception):
    """A refused code or resend; ``again`` says the user must log in again."""

    def __init__(self, message, again=False):
        Exception.__init__(self, message)
        self.again = again


def _digest(salt, code):
    return hashlib.sha256(salt + code.encode("ascii", "replace")).digest()


class Codes:
    """Pending logins: the password was right, the mailed code is awaited."""

    def __init__(self, lifetime=600, digits=8, tries=5, resend_interval=60, resend_max=3,
                 clock=time.monotonic):
        self.lifetime, self.digits, self.tries = lifetime, digits, tries
        self.resend_interval, self.resend_max = resend_interval, resend_max
        self.clock = clock
        self._pending = {}
        self._lock = threading.Lock()

    def _new_code(self, entry):
        code = "%0*d" % (self.digits, secrets.randbelow(10 ** self.digits))
        entry["salt"] = secrets.token_bytes(16)
        entry["hash"] = _digest(entry["salt"], code)
        entry["created"] = entry["sent"] = self.clock()
        entry["failed"] = 0
        return code

    def start(self, user):
        """A new pending login for ``user``; returns (pending id, code to mail)."""
        pending = secrets.token_urlsafe(24)
        entry = {"user": user, "resends": 0}
        code = self._new_code(entry)
        with self._lock:
            self._expire()
            self._pending[pending] = entry
        return pending, code

    def user_of(self, pending):
        with self._lock:
            entry = self._pending.get(pending or "")
            return entry["user"] if entry else None

    def resend(self, pending):
        """A fresh code for a pending login (the old one stops working)."""
        with self._lock:
            self._expire()
            entry = self._pending.get(pending or "")
            if entry is None:
                raise CodeError("Your login has expired. Log in again.", again=True)
            wait = self.resend_interval - (self.clock() - entry["sent"])
            if wait > 0:
                raise CodeError("A new code can be sent in %d seconds." % (int(wait) + 1))
            if entry["resends"] >= self.resend_max:
                raise CodeError("No more codes for this login. Log in again later.")
            entry["resends"] += 1
            return entry["user"], self._new_code(entry)

    def verify(self, pending, code):
        """The user when ``code`` is right (the pending login ends); CodeError otherwise."""
        code = (code or "").replace(" ", "").replace("-", "")
        with self._lock:
            entry = self._pending.get(pending or "")
            if entry is None:
                raise CodeError("This code was already used or has expired. Log in again.", again=True)
            if self.clock() - entry["created"] > self.lifetime:
                del self._pending[pending]
                raise CodeError("The code has expired. Log in again.", again=True)
            # Always hash, then compare digests in constant time.
            well_formed = len(code) == self.digits and code.isdigit() and code.isascii()
            right = hmac.compare_digest(_digest(entry["salt"], code), entry["hash"]) and well_formed
            if right:
                del self._pending[pending]
                return entry["user"]
            entry["failed"] += 1
            if entry["failed"] >= self.tries:
                del self._pending[pending]
                raise CodeError("Too many wrong codes. Log in again.", again=True)
            left = self.tries - entry["failed"]
            raise CodeError("Wrong code (%d digits expected); %d %s left."
                            % (self.digits, left, "try" if left == 1 else "tries"))

    def _expire(self):
        now = self.clock()
        for key in [k for k, e in self._pending.items() if now - e["created"] > self.lifetime]:
            del self._pending[key]


class Sessions:
    """Logged-in users (password and code both checked), ended after ``idle`` seconds."""

    def __init__(self, idle=900, clock=time.monotonic):
        self.idle, self.clock = idle, clock
        self._sessions = {}
        self._lock = threading.Lock()

    def create(self, user):
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[token] = {"user": user, "seen": self.clock()}
        return token

    def user(self, token):
        """The session's user (and the idle clock restarts), or None."""
        with self._lock:
            entry = self._sessions.get(token or "")
            if entry is None:
                return None
            now = self.clock()
            if now - entry["seen"] > self.idle:
                del self._sessions[token]
                return None
            entry["seen"] = now
            return entry["user"]

    def drop(self, token):
        with self._lock:
            self._sessions.pop(token or "", None)


class Limiter:
    """Failures per key (a user or a source address) in a sliding window."""

    def __init__(self, limit, window=900, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._fails = {}
        self._lock = threading.Lock()

    def _recent(self, key):
        cutoff = self.clock() - self.window
        times = [t for t in self._fails.get(key, ()) if t > cutoff]
        if times:
            self._fails[key] = times
        else:
            self._fails.pop(key, None)
        return times

    def blocked(self, key):
        with self._lock:
            return len(self._recent(key)) >= self.limit

    def fail(self, key):
        with self._lock:
            self._recent(key)
            self._fails.setdefault(key, []).append(self.clock())

    def reset(self, key):
        with self._lock:
            self._fails.pop(key, None)
