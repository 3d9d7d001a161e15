# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QR codes (PNG, SVG, terminal text) and a recovery sheet for a TOTP URI.

Private API (leading underscore): plain Python, no Ansible import. Runs on
the controller, where segno is installed; the URI and the scratch codes are
secrets, so no message here ever quotes them.

Idempotence re-renders the wanted bytes and compares them with what is on
disk: segno's PNG and SVG output is deterministic for the same input and
parameters, so no side file (such as a hash of the secret-bearing URI) is
needed, and a damaged or edited file is repaired.

Files are written through ``_controller_files``: folders made race-free
(several forks at once), files atomically, and a file recorded for another
owner (another host) is refused, never overwritten. The terminal copy of
the code goes straight to the operator's terminal, never into a result.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import io
import os
import re
import stat
import traceback

try:
    from urllib.parse import parse_qs, unquote, urlsplit
except ImportError:  # pragma: no cover - Python 2 is not a target
    from urlparse import parse_qs, urlsplit  # type: ignore
    from urllib import unquote  # type: ignore

try:
    import segno
except ImportError:  # pragma: no cover - reported by the module
    segno = None
    SEGNO_IMPORT_ERROR = traceback.format_exc()
else:
    SEGNO_IMPORT_ERROR = None

from ansible_collections.hardened.mailhost.plugins.module_utils import _controller_files

NAME_RE = re.compile(r"^[A-Za-z0-9._@-]+$")
SCRATCH_RE = re.compile(r"^[0-9]{8}$")
FORMATS = ("png", "svg")
DIR_MODE = 0o700
FILE_MODE = 0o600
# Error correction M and a 4-module quiet zone: what phone scanners read
# reliably from a screen or a print-out. 8 px per module keeps a ~60 module
# code near 500 px.
ERROR_LEVEL = "m"
SCALE = 8
BORDER = 4
TERMINAL_BORDER = 2
DATE_FORMAT = "%Y-%m-%d"
DATE_PREFIX = "Created: "


class QrError(Exception):
    """Bad input or a state that must not be touched; message is user-facing."""


def validate_name(name):
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise QrError("name must be a file base name of letters, digits and . _ @ -, got %r"
                      % (name,))


def parse_uri(uri):
    """Return (issuer, label) of an otpauth TOTP URI; the secret is not returned."""
    if not isinstance(uri, str) or any(ord(ch) < 33 or ord(ch) > 126 for ch in uri):
        raise QrError("uri must be an otpauth://totp/ URI of printable ASCII without spaces")
    parts = urlsplit(uri)
    if parts.scheme != "otpauth" or parts.netloc != "totp" or len(parts.path) < 2:
        raise QrError("uri is not an otpauth://totp/ URI")
    query = parse_qs(parts.query)
    if len(query.get("secret", [])) != 1 or not query["secret"][0]:
        raise QrError("uri has no secret parameter")
    account = unquote(parts.path[1:])
    if ":" in account:
        issuer, label = account.split(":", 1)
    else:
        issuer, label = "", account
    issuer = (query.get("issuer") or [issuer])[0]
    return issuer, label


def make_qr(uri):
    if segno is None:
        raise QrError("the Python library segno is required on the controller")
    return segno.make(uri, error=ERROR_LEVEL, micro=False)


def render(qr, kind):
    out = io.BytesIO()
    if kind == "png":
        qr.save(out, kind="png", scale=SCALE, border=BORDER)
    elif kind == "svg":
        qr.save(out, kind="svg", scale=SCALE, border=BORDER, xmldecl=True, svgns=True,
                title="TOTP enrolment")
    else:
        raise QrError("unknown format %r: use png or svg" % (kind,))
    return out.getvalue()


def terminal_lines(qr):
    """The code as text: two modules per character with half blocks.

    segno draws light modules as blocks (made for dark terminals); scanners
    read both polarities of QR codes shown on screens.
    """
    out = io.StringIO()
    qr.terminal(out=out, compact=True, border=TERMINAL_BORDER)
    return out.getvalue().rstrip("\n").split("\n")


def recovery_sheet(issuer, label, codes, date, identity=False):
    """The printable sheet of one-time codes.

    By default it names neither the account nor the host: a lost or copied
    sheet must not tell where its codes work. ``identity`` adds both.
    """
    lines = [
        "One-time recovery codes",
        "=======================",
        "",
    ]
    if identity:
        lines += [
            "Issuer:  %s" % (issuer or "-"),
            "Account: %s" % label,
        ]
    lines += [
        DATE_PREFIX + date,
        "",
        "Each code below logs you in ONCE in place of the 6-digit code from your",
        "authenticator app: type it at the \"Verification code:\" prompt. The server",
        "deletes a code when it is used, so cross it out here too.",
        "",
    ]
    lines += ["  %2d. %s %s" % (i, code[:4], code[4:]) for i, code in enumerate(codes, 1)]
    lines += [
        "",
        "Type the 8 digits without the space. Keep this sheet offline (printed, in",
        "a safe place), never on the device that holds the authenticator app, and",
        "do not write the account or the server on it.",
        "When codes run low or the phone is lost, ask the administrator for a new",
        "secret: that replaces every code on this sheet.",
        "",
    ]
    return "\n".join(lines)


def tty_text(issuer, label, qr):
    """What the operator's terminal shows for a new secret (header + code)."""
    header = "New TOTP secret for %s%s: scan this code with one or more authenticator apps." % (
        label, " (%s)" % issuer if issuer else "")
    return "\n".join(["", header, ""] + terminal_lines(qr) + [""])


def _existing_date(path):
    try:
        with open(path, "r") as handle:
            for line in handle:
                if line.startswith(DATE_PREFIX):
                    return line[len(DATE_PREFIX):].strip()
    except (IOError, OSError):
        return None
    return None


def _dir_needs_fix(dest):
    try:
        info = os.lstat(dest)
    except OSError as exc:
        # ENOTDIR: a file stands where a parent folder should be; making the
        # folder then fails with a message that names it.
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        return True
    if not stat.S_ISDIR(info.st_mode):
        raise QrError("dest %s exists and is not a folder" % dest)
    return stat.S_IMODE(info.st_mode) != DIR_MODE


def ensure(uri, dest, name, owner, formats=FORMATS, scratch_codes=None, force=False,
           check_mode=False, today=None, sheet_identity=False, tty=False):
    """Write the QR files (and the recovery sheet) under ``dest`` for ``owner``.

    Returns a dict with ``changed``, ``files`` and ``shown_on_tty``. With
    ``tty``, a new code (something changed, or ``force``) is written to the
    operator's terminal when there is one; never in check mode.
    """
    validate_name(name)
    issuer, label = parse_uri(uri)
    if not dest or not os.path.isabs(dest):
        raise QrError("dest must be an absolute folder path")
    if not isinstance(owner, str) or not owner.strip():
        raise QrError("owner must name whose files these are (normally the inventory host name)")
    formats = list(formats or [])
    if not formats:
        raise QrError("formats must list at least one of png, svg")
    for kind in formats:
        if kind not in FORMATS:
            raise QrError("unknown format %r: use png or svg" % (kind,))
    formats = [kind for kind in FORMATS if kind in formats]
    if scratch_codes is not None:
        if not isinstance(scratch_codes, (list, tuple)) or not all(
                isinstance(code, str) and SCRATCH_RE.match(code) for code in scratch_codes):
            raise QrError("scratch_codes must be a list of 8-digit codes")

    qr = make_qr(uri)
    wanted = []
    for kind in formats:
        wanted.append((os.path.join(dest, "%s.%s" % (name, kind)), render(qr, kind)))
    if scratch_codes:
        sheet_path = os.path.join(dest, "%s-recovery.txt" % name)
        date = None if force else _existing_date(sheet_path)
        date = date or (today or datetime.date.today()).strftime(DATE_FORMAT)
        wanted.append((sheet_path, recovery_sheet(issuer, label, scratch_codes, date,
                                                  identity=sheet_identity).encode("utf-8")))

    changed = _dir_needs_fix(dest)
    try:
        for path, data in wanted:
            if _controller_files.write_owned_file(path, data, owner, mode=FILE_MODE, check_mode=check_mode):
                changed = True
    except _controller_files.ControllerFileError as exc:
        raise QrError(str(exc))
    changed = changed or bool(force)
    shown = False
    if tty and changed and not check_mode:
        shown = _controller_files.show_on_tty(tty_text(issuer, label, qr))
    return {"changed": changed, "files": [path for path, _data in wanted], "shown_on_tty": shown}
