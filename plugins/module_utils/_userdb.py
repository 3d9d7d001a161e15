# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PIN entries in the Berkeley DB hash that ``pam_userdb`` reads.

``pam_userdb db=/etc/security/sudo_pin crypt=crypt`` opens
``/etc/security/sudo_pin.db`` (Berkeley DB 5.3, hash), looks the user name up
as key and checks the typed secret with ``crypt(3)`` against the value. This
module keeps one entry per user whose value is a SHA-512 crypt string.

Debian's python3 ``dbm.ndbm`` is built against the same libdb 5.3 that
pam_userdb uses, and its ndbm layer writes exactly such a hash file (adding
the ``.db`` suffix itself), so no extra package is needed on the host. A new
database is always built in a private folder beside the old one and renamed
over it: pam_userdb sees the old or the new file, never a half-written one.

Private API (leading underscore): no Ansible import.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import secrets
import shutil
import stat
import tempfile

from ansible_collections.hardened.mailhost.plugins.module_utils import _crypt, _fileutil

DB_SUFFIX = ".db"
FILE_MODE = 0o600
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")


class UserDBError(Exception):
    """The database cannot be read or written; the message says why."""


class PinPolicyError(ValueError):
    """A PIN or a request breaks the PIN policy; nothing was changed."""


def _ndbm():
    try:
        from dbm import ndbm
    except ImportError:
        raise UserDBError(
            "this Python has no dbm.ndbm module; use Debian's /usr/bin/python3, "
            "whose dbm.ndbm writes the Berkeley DB files pam_userdb reads")
    library = getattr(ndbm, "library", "")
    if "Berkeley" not in library:
        raise UserDBError(
            "this Python's dbm.ndbm is built on %r, but pam_userdb reads Berkeley DB; "
            "use Debian's /usr/bin/python3" % library)
    return ndbm


class PinPolicy:
    """What a PIN must look like; ``check`` raises PinPolicyError on the first breach."""

    def __init__(self, min_length=6, max_length=64, digits_only=True, refuse_trivial=True):
        if min_length < 1 or max_length < min_length:
            raise PinPolicyError("PIN policy: need 1 <= min_length <= max_length")
        self.min_length = min_length
        self.max_length = max_length
        self.digits_only = digits_only
        self.refuse_trivial = refuse_trivial

    def check(self, user, pin):
        if not isinstance(pin, str) or pin == "":
            raise PinPolicyError("the PIN for %s is empty" % user)
        if len(pin) < self.min_length:
            raise PinPolicyError("the PIN for %s is too short: %d characters, at least %d required"
                                 % (user, len(pin), self.min_length))
        if len(pin) > self.max_length:
            raise PinPolicyError("the PIN for %s is too long: at most %d characters"
                                 % (user, self.max_length))
        if self.digits_only and not (pin.isascii() and pin.isdigit()):
            raise PinPolicyError("the PIN for %s must consist of the digits 0-9 only" % user)
        if any(c in pin for c in "\x00\r\n"):
            raise PinPolicyError("the PIN for %s contains a NUL or line break" % user)
        lowered = pin.lower()
        name = user.lower()
        if lowered == name or lowered == name[::-1] or (len(name) >= 3 and name in lowered):
            raise PinPolicyError("the PIN for %s must not contain the user name" % user)
        if self.refuse_trivial and _trivial(pin):
            raise PinPolicyError(
                "the PIN for %s is trivial to guess (one repeated character or a straight run "
                "like 123456)" % user)

    def generate(self, length=None):
        """A random PIN that passes this policy (digits, or letters and digits)."""
        length = max(length or 0, self.min_length)
        if length > self.max_length:
            raise PinPolicyError("a generated PIN of %d characters exceeds max_length %d"
                                 % (length, self.max_length))
        alphabet = "0123456789" if self.digits_only else (
            "23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ")
        for _attempt in range(100):
            pin = "".join(secrets.choice(alphabet) for _position in range(length))
            if not (self.refuse_trivial and _trivial(pin)):
                return pin
        raise PinPolicyError("could not generate a PIN that passes the policy")  # pragma: no cover


def _trivial(pin):
    if len(set(pin)) == 1:
        return True
    codes = [ord(c) for c in pin]
    steps = {b - a for a, b in zip(codes, codes[1:])}
    return steps in ({1}, {-1})


def check_user(user):
    if not isinstance(user, str) or not _USER_RE.match(user) or len(user) > 64:
        raise PinPolicyError("%r is not a valid user name" % (user,))


class UserDB:
    """One pam_userdb database, named as pam_userdb's ``db=`` takes it (without ``.db``)."""

    def __init__(self, path):
        if not path or not os.path.isabs(path):
            raise UserDBError("the database path must be absolute, got %r" % (path,))
        if path.endswith(DB_SUFFIX):
            raise UserDBError(
                "give the database path without %s, as pam_userdb's db= takes it: %s"
                % (DB_SUFFIX, path[:-len(DB_SUFFIX)]))
        self.path = path
        self.filename = path + DB_SUFFIX
        self.folder = os.path.dirname(path)

    def exists(self):
        return os.path.exists(self.filename)

    def read(self):
        """All entries as {user: value} (str); {} when the file does not exist."""
        if not self.exists():
            return {}
        ndbm = _ndbm()
        try:
            handle = ndbm.open(self.path, "r")
        except Exception as exc:  # dbm.error has no stable base class across versions
            raise UserDBError("cannot read %s as a Berkeley DB hash: %s" % (self.filename, exc))
        try:
            return {k.decode("utf-8", "replace"): handle[k].decode("utf-8", "replace")
                    for k in handle.keys()}
        finally:
            handle.close()

    def metadata_ok(self):
        """True when the file is a regular file, mode 0600, owned by root (or by us when not root)."""
        st = os.lstat(self.filename)
        want_uid = 0 if os.geteuid() == 0 else os.geteuid()
        return (stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == FILE_MODE
                and st.st_uid == want_uid and (os.geteuid() != 0 or st.st_gid == 0))

    def write(self, entries):
        """Replace the database with ``entries`` ({user: value}) in one rename."""
        if not os.path.isdir(self.folder):
            raise UserDBError("folder %s does not exist" % self.folder)
        ndbm = _ndbm()
        workdir = tempfile.mkdtemp(prefix=".%s." % os.path.basename(self.path), dir=self.folder)
        try:
            base = os.path.join(workdir, "new")
            handle = ndbm.open(base, "n", FILE_MODE)
            try:
                for user in sorted(entries):
                    handle[user.encode("utf-8")] = entries[user].encode("utf-8")
            finally:
                handle.close()
            built = base + DB_SUFFIX
            if not os.path.isfile(built):
                raise UserDBError("dbm.ndbm did not write %s" % built)
            fd = os.open(built, os.O_RDONLY)
            try:
                os.fchmod(fd, FILE_MODE)
                if os.geteuid() == 0:
                    os.fchown(fd, 0, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(built, self.filename)
            _fileutil.fsync_dir(self.folder)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def locked(self):
        """Serialise writers on the folder itself (no lock file left behind)."""
        return _fileutil.locked(self.folder)


def ensure_pin(path, user, state="present", pin=None, generate=False, generate_length=None,
               rotate=False, policy=None, check_mode=False, propose=False):
    """Make ``user``'s entry in the database at ``path`` match the request.

    Returns a dict: ``changed``, ``action`` (``created``, ``updated``,
    ``removed``, ``fixed_permissions`` or ``none``), ``pin`` (only when a PIN
    was generated and really written, or proposed) and ``diff`` (no secrets).
    Bad input raises PinPolicyError or UserDBError before anything is touched.

    ``propose`` (with ``generate``) writes nothing: when the user would get a
    new PIN, one is drawn and returned, ``action`` says what storing it would
    do and ``changed`` is False. The caller keeps the PIN safe first and then
    stores it with ``pin``, so that a generated PIN is never lost.
    """
    policy = policy or PinPolicy()
    check_user(user)
    if state not in ("present", "absent"):
        raise PinPolicyError("state must be present or absent, got %r" % (state,))
    if state == "present":
        if pin is not None and generate:
            raise PinPolicyError("give either pin or generate, not both")
        if pin is None and not generate:
            raise PinPolicyError("state=present needs a pin or generate=true")
        if rotate and not generate:
            raise PinPolicyError("rotate only applies with generate=true")
        if propose and not generate:
            raise PinPolicyError("propose only applies with generate=true")
        if pin is not None:
            policy.check(user, pin)
    elif pin is not None or generate or propose:
        raise PinPolicyError("state=absent takes neither pin nor generate")
    db = UserDB(path)

    with db.locked():
        entries = db.read()
        current = entries.get(user)
        new_pin = None
        action = "none"
        if state == "absent":
            if current is not None:
                del entries[user]
                action = "removed"
        elif pin is not None:
            if current is None:
                action = "created"
            elif not _crypt.verify(pin, current):
                action = "updated"
            if action != "none":
                entries[user] = _crypt.sha512_crypt(pin)
        else:  # generate
            if current is None or rotate:
                action = "created" if current is None else "updated"
                new_pin = policy.generate(generate_length)
                entries[user] = _crypt.sha512_crypt(new_pin)
        if propose:
            result = {"changed": False, "action": action, "db": db.filename,
                      "diff": {"before": _describe(user, current is not None),
                               "after": _describe(user, current is not None)}}
            if new_pin is not None:
                result["pin"] = new_pin
            return result
        if action == "none" and db.exists() and not db.metadata_ok():
            action = "fixed_permissions"

        result = {
            "changed": action != "none",
            "action": action,
            "db": db.filename,
            "diff": {
                "before": _describe(user, current is not None),
                "after": _describe(user, user in entries, action in ("created", "updated")),
            },
        }
        if action != "none" and not check_mode:
            db.write(entries)
            if new_pin is not None:
                result["pin"] = new_pin
    return result


def _describe(user, present, new=False):
    if not present:
        return "%s: no PIN\n" % user
    return "%s: PIN set%s\n" % (user, " (new)" if new else "")


def ensure_pins(path, entries, generate_length=None, policy=None, check_mode=False,
                propose=False):
    """``ensure_pin`` for many users in one run: one lock, one read, one write.

    ``entries`` is a list of dicts with ``name`` and optionally ``state``
    (default present), ``pin``, ``generate`` and ``rotate``, each meaning what
    the argument of the same name means for ``ensure_pin``. Every entry is
    checked before the database is opened; any problem fails the whole request
    with a message naming each user concerned (never a PIN), and nothing is
    changed for anyone.

    Returns ``changed``, ``db``, ``users`` (per entry, in order: ``name``,
    ``state``, ``action``, ``changed``; never a PIN or hash), ``pins``
    ({name: PIN} for PINs generated and written, or drawn with ``propose``)
    and ``diff``.
    """
    policy = policy or PinPolicy()
    if not isinstance(entries, (list, tuple)):
        raise PinPolicyError("users must be a list")
    problems = []
    requests = []
    seen = set()
    for number, entry in enumerate(entries, 1):
        name = entry.get("name") if isinstance(entry, dict) else None
        try:
            requests.append(_request(entry, policy, propose))
        except (PinPolicyError, UserDBError) as exc:
            problems.append(str(exc) if isinstance(name, str) else "entry %d: %s" % (number, exc))
            continue
        if name in seen:
            problems.append("user %s is listed twice" % name)
        seen.add(name)
    if problems:
        raise PinPolicyError("nothing was changed for any user: " + "; ".join(problems))
    db = UserDB(path)

    with db.locked():
        current = db.read()
        wanted = dict(current)
        users, pins = [], {}
        for req in requests:
            name, old = req["name"], current.get(req["name"])
            action = "none"
            if req["state"] == "absent":
                if old is not None:
                    del wanted[name]
                    action = "removed"
            elif req["pin"] is not None:
                if old is None or not _crypt.verify(req["pin"], old):
                    action = "created" if old is None else "updated"
                    wanted[name] = _crypt.sha512_crypt(req["pin"])
            elif old is None or req["rotate"]:
                action = "created" if old is None else "updated"
                if propose or not check_mode:
                    pins[name] = policy.generate(generate_length)
                    wanted[name] = _crypt.sha512_crypt(pins[name])
            users.append({"name": name, "state": req["state"], "action": action,
                          "changed": action != "none" and not propose})
        before = "".join(_describe(u["name"], u["name"] in current) for u in users)
        if propose:
            return {"changed": False, "db": db.filename, "users": users, "pins": pins,
                    "diff": {"before": before, "after": before}}
        changed = any(u["changed"] for u in users)
        fix = not changed and db.exists() and not db.metadata_ok()
        after = "".join(_describe(u["name"], u["state"] == "present",
                                  u["action"] in ("created", "updated")) for u in users)
        if (changed or fix) and not check_mode:
            db.write(wanted)
        return {"changed": changed or fix, "fixed_permissions": fix, "db": db.filename,
                "users": users, "pins": {} if check_mode else pins,
                "diff": {"before": before, "after": after}}


def _request(entry, policy, propose):
    """One checked entry of ``ensure_pins``; raises PinPolicyError naming the user."""
    if not isinstance(entry, dict):
        raise PinPolicyError("each entry must be a dict with a name")
    unknown = set(entry) - {"name", "state", "pin", "generate", "rotate"}
    if unknown:
        raise PinPolicyError("unknown keys %s" % ", ".join(sorted(unknown)))
    name = entry.get("name")
    check_user(name)
    req = {"name": name, "state": entry.get("state") or "present", "pin": entry.get("pin"),
           "generate": bool(entry.get("generate")), "rotate": bool(entry.get("rotate"))}
    if req["state"] not in ("present", "absent"):
        raise PinPolicyError("%s: state must be present or absent" % name)
    if req["state"] == "absent":
        if req["pin"] is not None or req["generate"]:
            raise PinPolicyError("%s: state=absent takes neither pin nor generate" % name)
        if propose:
            raise PinPolicyError("%s: propose only applies to entries with generate=true" % name)
        return req
    if req["pin"] is not None and req["generate"]:
        raise PinPolicyError("%s: give either pin or generate, not both" % name)
    if req["pin"] is None and not req["generate"]:
        raise PinPolicyError("%s: state=present needs a pin or generate=true" % name)
    if req["rotate"] and not req["generate"]:
        raise PinPolicyError("%s: rotate only applies with generate=true" % name)
    if propose and not req["generate"]:
        raise PinPolicyError("%s: propose only applies to entries with generate=true" % name)
    if req["pin"] is not None:
        policy.check(name, req["pin"])
    return req
