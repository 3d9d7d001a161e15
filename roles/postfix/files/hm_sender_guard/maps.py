# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The suspension maps every Postfix process reads, and the guard's state.

Three Postfix access tables (text + ``postmap``), named in master.cf for the
submission services before anything else decides:

* ``suspended_ccert``   — ``check_ccert_access``: SHA-256 certificate fingerprints;
* ``suspended_sasl``    — ``check_sasl_access``: SASL (app password) logins;
* ``suspended_senders`` — ``check_sender_access``: ``user@`` (every domain) or a
  full address; sender binding makes this every identity of that user.

Each value is ``REJECT 5.7.1 <text>``. The text file is replaced atomically,
then ``postmap`` builds the table (Postfix processes notice the new table and
restart on their own). One lock covers the maps and the state file, so the
timer and a playbook never interleave.
"""

from __future__ import absolute_import, division, print_function

import contextlib
import errno
import fcntl
import json
import os
import subprocess
import tempfile
import time

MAP_NAMES = ("suspended_ccert", "suspended_sasl", "suspended_senders")
ACTION = "REJECT 5.7.1 Sending suspended by the administrator (hm-sender-guard); please contact them"
LOCK_TIMEOUT = 60


class GuardError(Exception):
    """Something an operator must fix; the message says what."""


def atomic_write(path, text, mode=0o644):
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path, timeout=LOCK_TIMEOUT):
    """An exclusive lock on ``path`` (created 0600), waiting at most ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise GuardError("%s is locked by another run (waited %d s)" % (path, timeout))
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def parse_map(text):
    """``{key: value}`` of a text access table (comments and blank lines skipped)."""
    result = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, _sep, value = stripped.partition(" ")
        result[key] = value.strip()
    return result


def render_map(name, entries):
    lines = ["# %s: written by hm-sender-guard (resume_sender.yml removes entries); do not edit by hand" % name]
    lines += ["%s %s" % (key, entries[key]) for key in sorted(entries)]
    return "\n".join(lines) + "\n"


class Maps(object):
    """The three tables in ``map_dir`` and the state file in ``state_dir``."""

    def __init__(self, map_dir, state_dir, db_type="hash", postmap="/usr/sbin/postmap"):
        self.map_dir = map_dir
        self.state_dir = state_dir
        self.db_type = db_type
        self.postmap = postmap
        self.lock_path = os.path.join(state_dir, "lock")
        self.state_path = os.path.join(state_dir, "state.json")

    def path(self, name):
        return os.path.join(self.map_dir, name)

    def read(self, name):
        try:
            with open(self.path(name), encoding="utf-8") as handle:
                return parse_map(handle.read())
        except FileNotFoundError:
            return {}

    def write(self, name, entries):
        atomic_write(self.path(name), render_map(name, entries))
        proc = subprocess.run([self.postmap, "%s:%s" % (self.db_type, self.path(name))],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise GuardError("postmap %s failed: %s" % (self.path(name), proc.stderr.strip()))

    def read_all(self):
        return {name: self.read(name) for name in MAP_NAMES}

    def read_state(self):
        try:
            with open(self.state_path, encoding="utf-8") as handle:
                state = json.load(handle)
        except FileNotFoundError:
            state = {}
        except ValueError as exc:
            raise GuardError("%s is damaged (%s); move it away to start afresh" % (self.state_path, exc))
        state.setdefault("suspended", {})
        state.setdefault("resumed", {})
        # Queue IDs this guard put on hold ({queue ID: identity}): a resume
        # releases these only, never mail held for another reason.
        state.setdefault("held", {})
        return state

    def write_state(self, state):
        atomic_write(self.state_path, json.dumps(state, indent=1, sort_keys=True) + "\n", mode=0o600)

    def lock(self):
        return locked(self.lock_path)
