# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-device mail app passwords in a Dovecot passwd-file.

Private API (leading underscore): plain Python, no Ansible import. The module
``app_password`` wraps it.

One line per (user, device)::

    alice+phone:{SHA512-CRYPT}$6$salt$hash::::::user=alice

The login name a mail client types is ``<user>+<device>`` (the dovecot role
also takes ``<user>+<device>@<served domain>``, and nothing with another
domain: it drops a served domain before it looks the name up); ``+`` never occurs
in a Linux user name or in a device label, so the split is unambiguous. The
``user=`` extra field makes Dovecot continue as the Linux account ``<user>``
(its mailbox, and the SASL user name it reports to Postfix). Only the hash is
stored; the password itself is returned once, when it is made.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os
import pwd
import re
import secrets

from ansible_collections.hardened.mailhost.plugins.module_utils import _crypt, _fileutil

DEFAULT_PATH = "/etc/dovecot/app-passwords"
SCHEME = "{SHA512-CRYPT}"
SEPARATOR = "+"
HEADER = (
    "# Managed by hardened.mailhost.app_password: one line per device.\n"
    "# <user>+<device>:{SHA512-CRYPT}hash::::::user=<user>  (edit with the module, not by hand)\n"
)
# Debian's adduser default NAME_REGEX, without the trailing '$' of machine accounts.
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
# Lower case only: Dovecot lower-cases the login name before it looks it up.
DEVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
# Letters and digits that cannot be confused with each other when typed from paper.
ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
GROUPS = 4
GROUP_LENGTH = 5  # 20 symbols of log2(31) bits: about 99 bits of entropy

_LINE_RE = re.compile(
    r"^(?P<user>[^:+\s]+)\+(?P<device>[^:\s]+):(?P<hash>\{SHA512-CRYPT\}\$6\$[^:\s]+)"
    r"::::::user=(?P<target>[^:\s]+)$"
)


class AppPasswordError(Exception):
    """Bad input or an unusable passwd-file; the message tells what to fix."""


def validate_user(user, must_exist=True):
    """Check a Linux account name (and, by default, that the account exists)."""
    if not isinstance(user, str) or not USER_RE.match(user):
        raise AppPasswordError(
            "invalid user name %r: use a Linux account name (lower-case letters, digits, "
            "'_', '-', '.', at most 32 characters, not starting with a digit or '-')" % (user,))
    if must_exist:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise AppPasswordError("user %r does not exist on this host: create the account first" % user)
    return user


def validate_device(device):
    """Check a device label (it becomes part of the login name)."""
    if not isinstance(device, str) or not DEVICE_RE.match(device):
        raise AppPasswordError(
            "invalid device label %r: use 1-32 lower-case letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (e.g. 'phone', 'laptop-2024')" % (device,))
    return device


def login_name(user, device):
    """The user name a mail client types for this device's app password."""
    return "%s%s%s" % (user, SEPARATOR, device)


def generate_password():
    """A random app password like ``k7mqz-4hxbd-pt9wa-3nrce`` (about 99 bits)."""
    return "-".join(
        "".join(secrets.choice(ALPHABET) for _position in range(GROUP_LENGTH)) for _group in range(GROUPS))


def hash_password(password):
    """The Dovecot passwd-file form of ``password``: ``{SHA512-CRYPT}$6$...``."""
    try:
        return SCHEME + _crypt.sha512_crypt(password)
    except _crypt.CryptError as exc:
        raise AppPasswordError(str(exc))


def verify_password(password, stored):
    """True when ``password`` matches a stored ``{SHA512-CRYPT}`` value."""
    if not stored.startswith(SCHEME):
        return False
    return _crypt.verify(password, stored[len(SCHEME):])


class Entry:
    """One device's app password line."""

    __slots__ = ("user", "device", "hashed")

    def __init__(self, user, device, hashed):
        self.user = user
        self.device = device
        self.hashed = hashed

    @property
    def login(self):
        return login_name(self.user, self.device)

    def line(self):
        return "%s:%s::::::user=%s\n" % (self.login, self.hashed, self.user)

    def public(self):
        """What may be shown and logged: never the hash."""
        return {"user": self.user, "device": self.device, "login": self.login}


def parse(text, path=DEFAULT_PATH):
    """Entries of a passwd-file written by this module, in file order.

    Comments and blank lines are skipped; any other line that is not in our
    format is an error, so a hand-made entry is never silently dropped.
    """
    entries = []
    seen = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE_RE.match(line)
        if not match or match.group("user") != match.group("target"):
            raise AppPasswordError(
                "%s line %d is not an app password entry "
                "('<user>+<device>:{SHA512-CRYPT}$6$...::::::user=<user>'); "
                "fix or remove that line by hand" % (path, number))
        entry = Entry(match.group("user"), match.group("device"), match.group("hash"))
        if entry.login in seen:
            raise AppPasswordError("%s line %d repeats the login %s; remove one of the lines"
                                   % (path, number, entry.login))
        seen.add(entry.login)
        entries.append(entry)
    return entries


def render(entries):
    """The file content for ``entries`` (sorted, so the order never causes a change)."""
    ordered = sorted(entries, key=lambda e: (e.user, e.device))
    return HEADER + "".join(entry.line() for entry in ordered)


class AppPasswordFile:
    """The passwd-file at ``path``, written atomically as ``owner``:``group`` ``mode``."""

    def __init__(self, path=DEFAULT_PATH, group="dovecot", mode=0o640, owner="root"):
        self.path = os.path.abspath(path)
        self.group = group
        self.mode = mode
        self.owner = owner

    @property
    def lock_path(self):
        folder, name = os.path.split(self.path)
        return os.path.join(folder, ".%s.lock" % name)

    def _check_folder(self):
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise AppPasswordError(
                "folder %s does not exist: install Dovecot first or choose another passwd_file" % folder)

    def _gid(self):
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise AppPasswordError(
                "group %r does not exist: install Dovecot first (its auth process reads the file "
                "through this group) or set another group" % self.group)

    def _uid(self):
        try:
            return pwd.getpwnam(self.owner).pw_uid
        except KeyError:
            raise AppPasswordError("owner %r does not exist" % self.owner)

    def read(self):
        """Current entries; an absent file has none."""
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return []
        except UnicodeDecodeError:
            raise AppPasswordError("%s is not a text file" % self.path)
        return parse(text, self.path)

    def _needs_fixing(self):
        """True when the file exists with another mode or owner than configured."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (info.st_mode & 0o7777) != self.mode or info.st_uid != self._uid() or info.st_gid != self._gid()

    def _write(self, entries):
        try:
            before = os.stat(self.path)
        except FileNotFoundError:
            before = None
        _fileutil.atomic_write(self.path, render(entries), mode=self.mode, uid=self._uid(), gid=self._gid())
        # Dovecot rereads a passwd-file when its mtime (whole seconds) or size
        # changed. A new hash has the old one's length, so a second write in the
        # same second would look unchanged: move the mtime on by a second then.
        after = os.stat(self.path)
        if before is not None and after.st_size == before.st_size and \
                int(after.st_mtime) <= int(before.st_mtime):
            os.utime(self.path, (after.st_atime, int(before.st_mtime) + 1))

    def list(self, user=None, device=None):
        return [e.public() for e in self.read()
                if (user is None or e.user == user) and (device is None or e.device == device)]

    def present(self, user, device, regenerate=False, check_mode=False, user_must_exist=True):
        """Make sure (user, device) has an app password.

        Returns ``(changed, password)``; ``password`` is the new clear-text
        password when one was made now (never in check mode), else ``None``.
        """
        validate_user(user, user_must_exist)
        validate_device(device)
        self._check_folder()
        self._gid()  # fail before generating anything
        if check_mode:
            current = {e.login: e for e in self.read()}
            return (regenerate or login_name(user, device) not in current or self._needs_fixing()), None
        with _fileutil.locked(self.lock_path):
            entries = self.read()
            current = {e.login: e for e in entries}
            login = login_name(user, device)
            if login in current and not regenerate:
                if self._needs_fixing():
                    self._write(entries)
                    return True, None
                return False, None
            password = generate_password()
            hashed = hash_password(password)
            if not verify_password(password, hashed):  # never hand out a password that cannot log in
                raise AppPasswordError("libcrypt produced a hash that does not verify; nothing was changed")
            current[login] = Entry(user, device, hashed)
            self._write(list(current.values()))
            return True, password

    def absent(self, user, device, check_mode=False):
        """Remove (user, device); returns whether something was (or would be) removed."""
        validate_user(user, must_exist=False)
        validate_device(device)
        if check_mode:
            return any(e.user == user and e.device == device for e in self.read())
        if not os.path.exists(self.path):
            return False
        with _fileutil.locked(self.lock_path):
            entries = self.read()
            kept = [e for e in entries if not (e.user == user and e.device == device)]
            if len(kept) == len(entries):
                return False
            self._write(kept)
            return True

    def apply(self, requests, check_mode=False):
        """Many devices in one run: one lock, one read, one write.

        ``requests`` is a list of dicts with ``user``, ``device`` and
        optionally ``state`` (default present) and ``regenerate``. Every
        request is checked before the file is touched; any problem fails the
        whole list naming each login concerned, and nothing is changed.

        Returns ``(devices, passwords, entries)``: per request ``user``,
        ``device``, ``login``, ``state``, ``changed`` (no hash, no password);
        {login: new password} for the passwords made now (none in check mode);
        and the file's entries after the run (in check mode, as they would be).
        A run may also change the file's mode or owner alone: compare
        ``needs_fixing()`` before and after.
        """
        if not isinstance(requests, (list, tuple)):
            raise AppPasswordError("devices must be a list")
        problems, checked, seen = [], [], set()
        for number, request in enumerate(requests, 1):
            try:
                checked.append(self._check_request(request))
            except AppPasswordError as exc:
                problems.append("entry %d: %s" % (number, exc))
                continue
            login = checked[-1]["login"]
            if login in seen:
                problems.append("%s is listed twice" % login)
            seen.add(login)
        if problems:
            raise AppPasswordError("nothing was changed for any device: " + "; ".join(problems))
        if any(r["state"] == "present" for r in checked):
            self._check_folder()
            self._gid()
        if check_mode or not checked:
            return self._plan(self.read(), checked, make=False)
        with _fileutil.locked(self.lock_path):
            entries = self.read()
            devices, passwords, wanted = self._plan(entries, checked, make=True)
            if any(d["changed"] for d in devices) or (entries and self._needs_fixing()):
                self._write(wanted)
            return devices, passwords, wanted

    def needs_fixing(self):
        return self._needs_fixing()

    @staticmethod
    def _check_request(request):
        if not isinstance(request, dict):
            raise AppPasswordError("each entry must be a dict with user and device")
        unknown = set(request) - {"user", "device", "state", "regenerate"}
        if unknown:
            raise AppPasswordError("unknown keys %s" % ", ".join(sorted(unknown)))
        state = request.get("state") or "present"
        if state not in ("present", "absent"):
            raise AppPasswordError("state must be present or absent, got %r" % (state,))
        user = validate_user(request.get("user"), must_exist=state == "present")
        device = validate_device(request.get("device"))
        return {"user": user, "device": device, "login": login_name(user, device), "state": state,
                "regenerate": bool(request.get("regenerate"))}

    def _plan(self, entries, checked, make):
        current = {e.login: e for e in entries}
        devices, passwords = [], {}
        for request in checked:
            login = request["login"]
            if request["state"] == "absent":
                changed = current.pop(login, None) is not None
            else:
                changed = login not in current or request["regenerate"]
                if changed and make:
                    password = generate_password()
                    hashed = hash_password(password)
                    if not verify_password(password, hashed):
                        raise AppPasswordError(
                            "libcrypt produced a hash that does not verify; nothing was changed")
                    current[login] = Entry(request["user"], request["device"], hashed)
                    passwords[login] = password
                elif changed:
                    current[login] = Entry(request["user"], request["device"], "")
            devices.append({"user": request["user"], "device": request["device"], "login": login,
                            "state": request["state"], "changed": changed})
        return devices, passwords, list(current.values())
