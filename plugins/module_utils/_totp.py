# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TOTP secrets in the file format that ``pam_google_authenticator`` reads.

Private API (leading underscore): plain Python, no Ansible import. Runs on
the managed host (Python 3.8+, no pyotp there): base32 and randomness come
from the standard library.

The file, as the PAM module reads it::

    <base32 secret>
    " RATE_LIMIT 2 30
    " WINDOW_SIZE 3
    " DISALLOW_REUSE
    " TOTP_AUTH
    12345678            (optional scratch codes, 8 digits each)

Option lines start with a double quote and a space. The PAM module rewrites
the file at every login and keeps runtime state in it: attempt timestamps
after the RATE_LIMIT pair, used time steps after DISALLOW_REUSE, learned
clock skew in TIME_SKEW / RESETTING_TIME_SKEW lines (inserted right after the
secret), and it deletes scratch codes once used. Comparisons here therefore
look at the configured part of each line only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import errno
import os
import pwd
import re
import secrets
import socket
import stat

try:
    from urllib.parse import quote, urlencode
except ImportError:  # pragma: no cover - Python 2 is not a target
    from urllib import quote, urlencode  # type: ignore

from ansible_collections.hardened.mailhost.plugins.module_utils import _fileutil

FILE_NAME = ".google_authenticator"
FILE_MODE = 0o400
# 160 bits: the RFC 4226 recommendation for HMAC-SHA1; 32 base32 characters.
SECRET_BYTES = 20
MAX_FILE_SIZE = 64 * 1024  # the PAM module refuses larger files

USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
SECRET_RE = re.compile(r"^[A-Z2-7]{16,128}$")
SCRATCH_RE = re.compile(r"^[1-9][0-9]{7}$")
INT_RE = re.compile(r"^[0-9]{1,10}$")
SIGNED_INT_RE = re.compile(r"^[+-]?[0-9]{1,10}$")
SKEW_PAIR_RE = re.compile(r"^[0-9]{1,10}[+-][0-9]{1,10}$")
OPTION_KEY_RE = re.compile(r"^[A-Z_]{1,32}$")

# Bounds of the module's options. The PAM module itself accepts RATE_LIMIT
# 1..100 attempts per 1..3600 s and WINDOW_SIZE 1..100; the narrower ranges
# keep a host from being configured into uselessness (a window of 100 steps
# accepts codes from 25 minutes either side).
RATE_LIMIT_LOGINS = (0, 10)
RATE_LIMIT_SECONDS = (15, 600)
WINDOW_SIZE = (1, 21)
SCRATCH_CODES = (0, 10)

SECRET_PLACEHOLDER = "<secret>"
SCRATCH_PLACEHOLDER = "<scratch code>"

# Lines the PAM module adds by itself; kept verbatim when the secret is kept.
RUNTIME_KEYS = ("TIME_SKEW", "RESETTING_TIME_SKEW")
KNOWN_KEYS = ("RATE_LIMIT", "WINDOW_SIZE", "DISALLOW_REUSE", "TOTP_AUTH",
              "STEP_SIZE", "HOTP_COUNTER") + RUNTIME_KEYS


class TotpError(Exception):
    """Bad input or a state the module must not touch; message is user-facing."""


class MalformedFile(TotpError):
    """The existing file is not a TOTP file this module can keep."""


class User:
    def __init__(self, name, uid, gid, home):
        self.name = name
        self.uid = uid
        self.gid = gid
        self.home = home


def lookup_user(name):
    """Return the passwd entry of ``name`` or raise TotpError."""
    if not isinstance(name, str) or not USER_NAME_RE.match(name):
        raise TotpError(
            "invalid user name %r: it must match %s" % (name, USER_NAME_RE.pattern))
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise TotpError("user %s does not exist" % name) from None
    return User(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def default_path(user):
    if not user.home or not os.path.isabs(user.home) or not os.path.isdir(user.home):
        raise TotpError(
            "home directory %s of user %s does not exist" % (user.home or "(empty)", user.name))
    return os.path.join(user.home, FILE_NAME)


class Settings:
    """The configured part of the file (what the operator asks for)."""

    def __init__(self, rate_limit_logins=2, rate_limit_seconds=30, window_size=3,
                 disallow_reuse=True, scratch_codes=0):
        self.rate_limit_logins = rate_limit_logins
        self.rate_limit_seconds = rate_limit_seconds
        self.window_size = window_size
        self.disallow_reuse = disallow_reuse
        self.scratch_codes = scratch_codes

    def validate(self):
        def check_int(name, value, bounds, extra=""):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TotpError("%s must be an integer, got %r" % (name, value))
            low, high = bounds
            if not low <= value <= high:
                raise TotpError("%s must be between %d and %d%s, got %d"
                                % (name, low, high, extra, value))

        check_int("rate_limit_logins", self.rate_limit_logins, RATE_LIMIT_LOGINS,
                  " (0 disables rate limiting)")
        if self.rate_limit_logins:
            check_int("rate_limit_seconds", self.rate_limit_seconds, RATE_LIMIT_SECONDS)
        check_int("window_size", self.window_size, WINDOW_SIZE)
        check_int("scratch_codes", self.scratch_codes, SCRATCH_CODES)
        if not isinstance(self.disallow_reuse, bool):
            raise TotpError("disallow_reuse must be a boolean, got %r" % (self.disallow_reuse,))
        return self

    @property
    def rate_limit(self):
        if not self.rate_limit_logins:
            return None
        return (self.rate_limit_logins, self.rate_limit_seconds)


class TotpFile:
    """A parsed ``.google_authenticator``.

    ``rate_limit`` is ``(attempts, seconds)`` or None, ``rate_limit_state``
    the attempt timestamps the PAM module appended, ``reuse_state`` the used
    time steps, ``extra_lines`` the verbatim runtime lines (TIME_SKEW, ...).
    """

    def __init__(self, secret, rate_limit=None, rate_limit_state=None, window_size=None,
                 disallow_reuse=False, reuse_state=None, totp=True, step_size=None,
                 extra_lines=None, scratch_codes=None):
        self.secret = secret
        self.rate_limit = rate_limit
        self.rate_limit_state = list(rate_limit_state or [])
        self.window_size = window_size
        self.disallow_reuse = disallow_reuse
        self.reuse_state = list(reuse_state or [])
        self.totp = totp
        self.step_size = step_size
        self.extra_lines = list(extra_lines or [])
        self.scratch_codes = list(scratch_codes or [])

    def option_mismatches(self, settings):
        """Names of the configured options that differ from ``settings``."""
        wrong = []
        if self.rate_limit != settings.rate_limit:
            wrong.append("rate limit")
        if self.window_size != settings.window_size:
            wrong.append("window size")
        if self.disallow_reuse != settings.disallow_reuse:
            wrong.append("disallow reuse")
        # STEP_SIZE 30 is the PAM default and what the otpauth URI announces.
        if self.step_size not in (None, 30):
            wrong.append("step size")
        if len(self.scratch_codes) > settings.scratch_codes:
            wrong.append("too many scratch codes")
        return wrong


def generate_secret():
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def generate_scratch_codes(count):
    codes = []
    while len(codes) < count:
        code = "%d" % (10000000 + secrets.randbelow(90000000))
        if code not in codes:
            codes.append(code)
    return codes


def decode_secret(secret):
    """Base32 secret to bytes; raises TotpError when it is not valid base32."""
    if not SECRET_RE.match(secret or ""):
        raise TotpError("not a base32 secret of 16 to 128 characters")
    padded = secret + "=" * (-len(secret) % 8)
    try:
        return base64.b32decode(padded)
    except (ValueError, TypeError):
        raise TotpError("not a base32 secret") from None


def _check_label_part(name, value):
    if not isinstance(value, str) or not value.strip():
        raise TotpError("%s must be a non-empty string" % name)
    if ":" in value:
        raise TotpError("%s must not contain ':' (it separates issuer and label "
                        "in the otpauth URI), got %r" % (name, value))
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise TotpError("%s must not contain control characters" % name)
    if len(value) > 128:
        raise TotpError("%s is longer than 128 characters" % name)


def default_issuer():
    return socket.getfqdn() or socket.gethostname()


def default_label(user_name):
    return "%s@%s" % (user_name, socket.gethostname().split(".")[0])


def validate_issuer_label(issuer, label):
    _check_label_part("issuer", issuer)
    _check_label_part("label", label)


def build_uri(secret, issuer, label):
    """``otpauth://totp/ISSUER:LABEL?...`` (Key URI Format), percent-quoted."""
    validate_issuer_label(issuer, label)
    decode_secret(secret)
    path = "%s:%s" % (quote(issuer, safe=""), quote(label, safe=""))
    query = urlencode([("secret", secret), ("issuer", issuer), ("algorithm", "SHA1"),
                       ("digits", "6"), ("period", "30")], quote_via=quote)
    return "otpauth://totp/%s?%s" % (path, query)


def _ints(tokens, line_no, what):
    for token in tokens:
        if not INT_RE.match(token):
            raise MalformedFile("line %d: %s holds a value that is not a number" % (line_no, what))
    return [int(t) for t in tokens]


def parse(text):
    """Parse the file's text; raise MalformedFile with a reason that never
    quotes the file's content (it may be a secret)."""
    if "\0" in text:
        raise MalformedFile("the file holds NUL bytes")
    if any(ord(ch) > 126 for ch in text):
        raise MalformedFile("the file holds bytes that are not printable ASCII")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines:
        raise MalformedFile("the file is empty")
    try:
        decode_secret(lines[0])
    except TotpError:
        raise MalformedFile("line 1 is not a base32 secret of 16 to 128 characters "
                            "(A-Z, 2-7, no padding)") from None
    result = TotpFile(lines[0], totp=False)
    seen = set()
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if line.startswith('"'):
            if not line.startswith('" '):
                raise MalformedFile("line %d: an option line must start with '\" '" % line_no)
            fields = line[2:].split()
            key = fields[0] if fields else ""
            values = fields[1:]
            if not OPTION_KEY_RE.match(key) or key not in KNOWN_KEYS:
                raise MalformedFile("line %d: unknown option line" % line_no + (
                    " %s" % key if OPTION_KEY_RE.match(key) else ""))
            if key in seen:
                raise MalformedFile("line %d: option %s appears twice" % (line_no, key))
            seen.add(key)
            if key == "HOTP_COUNTER":
                raise MalformedFile("this is a counter-based (HOTP) file; only TOTP is managed")
            if key == "TOTP_AUTH":
                if values:
                    raise MalformedFile("line %d: TOTP_AUTH takes no value" % line_no)
                result.totp = True
            elif key == "RATE_LIMIT":
                numbers = _ints(values, line_no, key)
                if len(numbers) < 2 or not (1 <= numbers[0] <= 100 and 1 <= numbers[1] <= 3600):
                    raise MalformedFile("line %d: RATE_LIMIT needs attempts (1-100) and "
                                        "seconds (1-3600)" % line_no)
                result.rate_limit = (numbers[0], numbers[1])
                result.rate_limit_state = values[2:]
            elif key == "WINDOW_SIZE":
                numbers = _ints(values, line_no, key)
                if len(numbers) != 1 or not 1 <= numbers[0] <= 100:
                    raise MalformedFile("line %d: WINDOW_SIZE needs one number 1-100" % line_no)
                result.window_size = numbers[0]
            elif key == "STEP_SIZE":
                numbers = _ints(values, line_no, key)
                if len(numbers) != 1 or not 1 <= numbers[0] <= 60:
                    raise MalformedFile("line %d: STEP_SIZE needs one number 1-60" % line_no)
                result.step_size = numbers[0]
            elif key == "DISALLOW_REUSE":
                _ints(values, line_no, key)
                result.disallow_reuse = True
                result.reuse_state = values
            elif key == "TIME_SKEW":
                if len(values) != 1 or not SIGNED_INT_RE.match(values[0]):
                    raise MalformedFile("line %d: TIME_SKEW needs one number" % line_no)
                result.extra_lines.append('" TIME_SKEW %s' % values[0])
            elif key == "RESETTING_TIME_SKEW":
                if not all(SKEW_PAIR_RE.match(v) for v in values):
                    raise MalformedFile("line %d: RESETTING_TIME_SKEW holds garbage" % line_no)
                result.extra_lines.append(" ".join(['" RESETTING_TIME_SKEW'] + values))
            continue
        if SCRATCH_RE.match(line):
            if line in result.scratch_codes:
                raise MalformedFile("line %d: a scratch code appears twice" % line_no)
            result.scratch_codes.append(line)
            continue
        raise MalformedFile("line %d is neither an option line nor an 8-digit scratch code"
                            % line_no)
    if not result.totp:
        raise MalformedFile("the file has no TOTP_AUTH line (not a time-based secret)")
    return result


def render(totp_file, include_state=True):
    """Text of the file, in the order the google-authenticator tool writes."""
    lines = [totp_file.secret]
    if totp_file.rate_limit:
        parts = ["RATE_LIMIT", "%d" % totp_file.rate_limit[0], "%d" % totp_file.rate_limit[1]]
        if include_state:
            parts += totp_file.rate_limit_state
        lines.append('" ' + " ".join(parts))
    if totp_file.step_size is not None:
        lines.append('" STEP_SIZE %d' % totp_file.step_size)
    if totp_file.window_size is not None:
        lines.append('" WINDOW_SIZE %d' % totp_file.window_size)
    if totp_file.disallow_reuse:
        parts = ["DISALLOW_REUSE"] + (totp_file.reuse_state if include_state else [])
        lines.append('" ' + " ".join(parts))
    if totp_file.totp:
        lines.append('" TOTP_AUTH')
    if include_state:
        lines.extend(totp_file.extra_lines)
    lines.extend(totp_file.scratch_codes)
    return "\n".join(lines) + "\n"


def redacted(totp_file, secret_placeholder=SECRET_PLACEHOLDER):
    """The file for a diff: configured option lines, secret and codes masked."""
    masked = TotpFile(
        secret_placeholder, rate_limit=totp_file.rate_limit,
        window_size=totp_file.window_size, disallow_reuse=totp_file.disallow_reuse,
        totp=totp_file.totp, step_size=totp_file.step_size,
        scratch_codes=[SCRATCH_PLACEHOLDER] * len(totp_file.scratch_codes))
    return render(masked, include_state=False)


def _read_existing(path):
    """Return (text, lstat) of ``path``; (None, None) when it does not exist."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None, None
        raise TotpError("cannot inspect %s: %s" % (path, exc.strerror)) from None
    if not stat.S_ISREG(info.st_mode):
        return None, info
    if info.st_size > MAX_FILE_SIZE:
        return None, info
    # The home belongs to the user, who could swap the file for a link or a
    # FIFO after lstat(): no following, no blocking, and the same inode.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise TotpError("cannot read %s: %s" % (path, exc.strerror)) from None
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode) or opened.st_ino != info.st_ino:
            raise TotpError("%s was replaced while it was read; run again" % path)
        data = handle.read(MAX_FILE_SIZE + 1)
    # latin-1 maps every byte; parse() rejects what is not ASCII.
    return data.decode("latin-1"), info


def _same_file(before, path):
    try:
        now = os.lstat(path)
    except OSError:
        return before is None
    if before is None:
        return False
    return (now.st_ino, now.st_size, now.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)


def _problem_with(path, text, info, user):
    """Why the existing file cannot be kept (None when it is fine), and its parse."""
    if not stat.S_ISREG(info.st_mode):
        return "%s exists but is not a regular file" % path, None
    if info.st_size > MAX_FILE_SIZE:
        return "%s is larger than 64 KiB" % path, None
    if info.st_uid != user.uid:
        return "%s is owned by uid %d, not by %s (uid %d)" % (
            path, info.st_uid, user.name, user.uid), None
    try:
        return None, parse(text)
    except MalformedFile as exc:
        return "%s is not a valid TOTP file: %s" % (path, exc), None


def ensure(user_name, state="present", path=None, settings=None, rotate=False,
           issuer=None, label=None, check_mode=False, _attempts=3):
    """Bring the secret file of ``user_name`` to the wanted state.

    Returns a dict with ``changed``, ``path``, ``created``, ``rotated``,
    ``diff`` and, only when a new secret was written, ``secret``, ``uri``,
    ``scratch_codes``. Raises TotpError for bad input or a file that must not
    be touched.
    """
    if state not in ("present", "absent"):
        raise TotpError("state must be 'present' or 'absent', got %r" % (state,))
    user = lookup_user(user_name)
    if path is None:
        path = default_path(user)
    else:
        if not os.path.isabs(path):
            raise TotpError("path must be absolute, got %r" % (path,))
        if not os.path.isdir(os.path.dirname(path)):
            raise TotpError("the folder of path %s does not exist" % path)
    settings = (settings or Settings()).validate()
    if not isinstance(rotate, bool):
        raise TotpError("rotate must be a boolean")
    if state == "present":
        issuer = default_issuer() if issuer is None else issuer
        label = default_label(user.name) if label is None else label
        validate_issuer_label(issuer, label)

    for _attempt in range(_attempts):
        text, info = _read_existing(path)
        if state == "absent":
            return _absent(path, text, info, check_mode)
        result = _present(path, text, info, user, settings, rotate, issuer, label,
                          check_mode)
        if result is not None:
            return result
    raise TotpError("%s kept changing while it was being updated (a login in progress?); "
                    "run again" % path)


def _absent(path, text, info, check_mode):
    result = _plan_absent(path, text, info)
    if result["changed"] and not check_mode:
        _remove(path)
    return result


def _plan_absent(path, text, info):
    result = {"changed": False, "path": path, "created": False, "rotated": False,
              "diff": {"before": "", "after": ""}}
    if info is None:
        return result
    try:
        before = redacted(parse(text)) if text is not None else "<not a regular file>\n"
    except MalformedFile:
        before = "<unparsable file>\n"
    result.update(changed=True, diff={"before": before, "after": ""})
    return result


def _remove(path):
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise TotpError("cannot remove %s: %s" % (path, exc.strerror)) from None


def _present(path, text, info, user, settings, rotate, issuer, label, check_mode):
    result, wanted = _plan_present(path, text, info, user, settings, rotate)
    if wanted is None or check_mode:
        return result
    # The PAM module rewrites this file at each login; never undo its update
    # (a consumed scratch code or used time step must stay consumed).
    if not _same_file(info, path):
        return None
    _write(path, info, user, wanted)
    if result["created"]:
        result.update(_new_secret(wanted, issuer, label))
    return result


def _new_secret(wanted, issuer, label):
    return {"secret": wanted.secret, "uri": build_uri(wanted.secret, issuer, label),
            "scratch_codes": list(wanted.scratch_codes)}


def _write(path, info, user, wanted):
    if info is not None and not stat.S_ISREG(info.st_mode):
        _remove_non_file(path, info)
    _fileutil.atomic_write(path, render(wanted), mode=FILE_MODE, uid=user.uid, gid=user.gid)


def _plan_present(path, text, info, user, settings, rotate):
    """``(result, wanted)``: the result of bringing the file to ``settings`` and
    the TotpFile to write (None when nothing is to be written). Raises
    MalformedFile for a file that must not be touched."""
    result = {"changed": False, "path": path, "created": False, "rotated": False}
    existing = None
    if info is not None:
        problem, existing = _problem_with(path, text, info, user)
        if problem and not rotate:
            raise MalformedFile(problem + "; nothing was changed (rotate: true replaces it "
                                "with a new secret)")

    new_secret = info is None or rotate
    if new_secret:
        wanted = TotpFile(generate_secret(), rate_limit=settings.rate_limit,
                          window_size=settings.window_size,
                          disallow_reuse=settings.disallow_reuse, totp=True,
                          scratch_codes=generate_scratch_codes(settings.scratch_codes))
        before = "" if info is None else (
            redacted(existing, "<secret (current)>") if existing else "<unusable file>\n")
        after = redacted(wanted, "<secret (new)>" if info is not None else SECRET_PLACEHOLDER)
        reasons = ["new secret"] if info is None else ["rotate"]
    else:
        reasons = existing.option_mismatches(settings)
        # Keep the runtime state: dropping used time steps would make a code
        # that just logged in valid again; attempt times keep the brute-force
        # throttle; TIME_SKEW keeps phones with a drifting clock working.
        wanted = TotpFile(existing.secret, rate_limit=settings.rate_limit,
                          rate_limit_state=existing.rate_limit_state if settings.rate_limit else [],
                          window_size=settings.window_size,
                          disallow_reuse=settings.disallow_reuse,
                          reuse_state=existing.reuse_state if settings.disallow_reuse else [],
                          totp=True, step_size=None, extra_lines=existing.extra_lines,
                          scratch_codes=existing.scratch_codes[:settings.scratch_codes])
        if stat.S_IMODE(info.st_mode) != FILE_MODE or info.st_gid != user.gid:
            reasons.append("permissions")
        before = redacted(existing)
        after = redacted(wanted)
        if not reasons:
            result["diff"] = {"before": before, "after": after}
            return result, None

    result.update(changed=True, created=new_secret, rotated=bool(new_secret and info is not None),
                  reasons=reasons, diff={"before": before, "after": after})
    return result, wanted


def _remove_non_file(path, info):
    """rotate over a non-file: a symlink is replaced by the rename itself;
    a folder cannot be, and is left to the operator."""
    if stat.S_ISDIR(info.st_mode):
        raise TotpError("%s is a folder; remove it by hand" % path)


def ensure_many(user_names, state="present", settings=None, rotate=False, issuer=None,
                check_mode=False, _attempts=3):
    """``ensure`` for a list of users in one run, all or nothing.

    Every user is looked up and every existing file read and checked before
    anything is written: one problem anywhere fails the whole request with a
    message naming each user concerned, and nothing is changed. If a write
    fails part way, the files already written in this run are put back as
    they were, so no new secret stays in force that the caller never received.

    Returns a dict with ``changed``, ``users`` (one entry per user in the
    given order: ``name``, ``path``, ``state``, ``changed``, ``created``,
    ``rotated`` and, for a change, ``reasons``; never a secret), ``secrets``
    ({name: {secret, uri, scratch_codes}} for the new secrets written; empty
    in check mode) and ``diff`` (the changed users' files, redacted).
    """
    if state not in ("present", "absent"):
        raise TotpError("state must be 'present' or 'absent', got %r" % (state,))
    if not isinstance(user_names, (list, tuple)):
        raise TotpError("users must be a list of user names")
    settings = (settings or Settings()).validate()
    if not isinstance(rotate, bool):
        raise TotpError("rotate must be a boolean")
    if state == "present":
        issuer = default_issuer() if issuer is None else issuer
        _check_label_part("issuer", issuer)

    problems = []
    targets = []
    seen = set()
    for name in user_names:
        if isinstance(name, str) and name in seen:
            problems.append("user %s is listed twice" % name)
            continue
        seen.add(name if isinstance(name, str) else None)
        try:
            user = lookup_user(name)
            if state == "present":
                _check_label_part("label of %s" % user.name, default_label(user.name))
            targets.append((user, default_path(user)))
        except TotpError as exc:
            problems.append(str(exc))
    _refuse(problems)

    plans = []
    for user, path in targets:
        try:
            plans.append(_plan_user(user, path, state, settings, rotate))
        except TotpError as exc:
            problems.append("%s: %s" % (user.name, exc))
    _refuse(problems)

    secrets_made = {}
    if not check_mode:
        done = []
        try:
            for index, plan in enumerate(plans):
                plans[index] = _apply_plan(plan, state, settings, rotate, done, _attempts)
                if plans[index]["result"]["created"]:
                    secrets_made[plan["user"].name] = _new_secret(
                        plans[index]["wanted"], issuer, default_label(plan["user"].name))
        except (TotpError, OSError) as exc:
            secrets_made.clear()
            not_restored = _undo(done)
            raise TotpError(
                "%s: %s. %s" % (plan["user"].name, exc, (
                    "The files of the users written before it were put back as they were; "
                    "nothing was changed for anyone." if not not_restored else
                    "These files could not be put back and need a look: %s."
                    % ", ".join(not_restored)))) from None

    users = []
    before, after = [], []
    for plan in plans:
        result = plan["result"]
        entry = {"name": plan["user"].name, "path": result["path"], "state": state,
                 "changed": result["changed"], "created": result["created"],
                 "rotated": result["rotated"]}
        if result["changed"]:
            if "reasons" in result:
                entry["reasons"] = result["reasons"]
            header = "# %s\n" % result["path"]
            before.append(header + result["diff"]["before"])
            after.append(header + result["diff"]["after"])
        users.append(entry)
    return {"changed": any(u["changed"] for u in users), "users": users,
            "secrets": secrets_made, "diff": {"before": "".join(before), "after": "".join(after)}}


def _refuse(problems):
    if problems:
        raise TotpError("nothing was changed for any user: " + "; ".join(problems))


def _plan_user(user, path, state, settings, rotate):
    text, info = _read_existing(path)
    if state == "absent":
        return {"user": user, "path": path, "text": text, "info": info,
                "result": _plan_absent(path, text, info), "wanted": None}
    result, wanted = _plan_present(path, text, info, user, settings, rotate)
    return {"user": user, "path": path, "text": text, "info": info,
            "result": result, "wanted": wanted}


def _apply_plan(plan, state, settings, rotate, done, attempts):
    """Write one planned change (re-planned when a login rewrote the file
    meanwhile); record in ``done`` how to put the file back."""
    for _attempt in range(attempts):
        if not plan["result"]["changed"]:
            return plan
        if _same_file(plan["info"], plan["path"]):
            if state == "absent":
                _remove(plan["path"])
            else:
                _write(plan["path"], plan["info"], plan["user"], plan["wanted"])
            done.append(plan)
            return plan
        plan = _plan_user(plan["user"], plan["path"], state, settings, rotate)
    raise TotpError("%s kept changing while it was being updated (a login in progress?); "
                    "run again" % plan["path"])


def _undo(done):
    """Put the files written in this run back; return the paths that could not be."""
    not_restored = []
    for plan in reversed(done):
        path, info, text = plan["path"], plan["info"], plan["text"]
        try:
            if info is None:
                _remove(path)
            elif text is not None:
                _fileutil.atomic_write(path, text.encode("latin-1"), mode=stat.S_IMODE(info.st_mode),
                                       uid=info.st_uid, gid=info.st_gid)
            else:
                not_restored.append(path)
        except (TotpError, OSError):
            not_restored.append(path)
    return not_restored
