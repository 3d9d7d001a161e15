# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files the collection hands to the operator on the controller.

Private API (leading underscore): plain Python, no Ansible import.

An operator runs a playbook against many hosts at once (forks > 1), and may
point several hosts at one folder. Everything written here is therefore:

- race-free: folders are made with ``exist_ok`` (two forks creating the same
  folder both succeed), files through a temporary file and one rename;
- private: folders 0700, files 0600 (or 0400), a symlink in the way is refused;
- owned: each folder keeps a small ``.owners`` ledger (file name, owner) under
  an exclusive lock, so a file written for one host (or one user on one host)
  is never replaced by another owner's run. The refusal names both owners.

The content is a secret: no message or return value here ever quotes it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import glob
import os
import stat

from ansible_collections.hardened.mailhost.plugins.module_utils import _fileutil

OWNERS_FILE = ".owners"

# The options of the controller_secret action plugin (and of its documentation
# module): one spec, so the two never drift apart.
SECRET_ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    content=dict(type="str", no_log=True),
    content_b64=dict(type="str", no_log=True),
    owner=dict(type="str", required=True),
    mode=dict(type="raw", default="0600"),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    tty_message=dict(type="str", no_log=True),
)
DIR_MODE = 0o700
FILE_MODES = (0o600, 0o400)


class ControllerFileError(Exception):
    """A file cannot be written safely; the message is user-facing and names no secret."""


def ensure_private_dir(path):
    """Make ``path`` (and missing parents) as folders only the operator can read.

    Safe when several processes create the same folder at once. An existing
    folder keeps its owner; its mode is narrowed to 0700 when it is ours.
    """
    path = os.path.abspath(path)
    if os.path.islink(path):
        raise ControllerFileError("%s is a symbolic link; give a real folder" % path)
    # Each missing level is made 0700 (os.makedirs gives parents 0777 - umask);
    # EEXIST from a fork that made it first is success.
    missing = []
    head = path
    while not os.path.lexists(head):
        missing.append(head)
        head = os.path.dirname(head)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise ControllerFileError("cannot create the folder %s: %s" % (folder, exc.strerror))
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ControllerFileError("%s exists and is not a folder" % path)
    if stat.S_IMODE(info.st_mode) != DIR_MODE and info.st_uid == os.getuid():
        os.chmod(path, DIR_MODE)
    return path


def _read_owners(folder):
    owners = {}
    try:
        with open(os.path.join(folder, OWNERS_FILE), encoding="utf-8") as handle:
            for line in handle:
                name, sep, owner = line.rstrip("\n").partition("\t")
                if sep:
                    owners[name] = owner
    except (IOError, OSError) as exc:
        if exc.errno != errno.ENOENT:
            raise
    return owners


def _write_owners(folder, owners):
    lines = "".join("%s\t%s\n" % (name, owners[name]) for name in sorted(owners))
    _fileutil.atomic_write(os.path.join(folder, OWNERS_FILE), lines, mode=0o600)


def _validate(path, owner, mode):
    if not isinstance(owner, str) or not owner or any(ch in owner for ch in "\t\n\r"):
        raise ControllerFileError("owner must be a non-empty single-line name")
    if mode not in FILE_MODES:
        raise ControllerFileError("mode must be 0600 or 0400, got %o" % mode)
    base = os.path.basename(path)
    if not base or base in (".", "..", OWNERS_FILE) or "\t" in base or "\n" in base:
        raise ControllerFileError("%r is not a usable file name" % path)


def owner_of(path):
    """Return the recorded owner of ``path``, or None."""
    path = os.path.abspath(os.path.expanduser(path))
    return _read_owners(os.path.dirname(path)).get(os.path.basename(path))


def write_owned_file(path, data, owner, mode=0o600, check_mode=False):
    """Write ``data`` (bytes or str) to ``path`` for ``owner``; return True when changed.

    Same owner and same bytes: nothing is written. Same owner, new bytes (a
    rotated secret): the file is replaced atomically. A file recorded for
    another owner, or an unrecorded file with other bytes, is refused.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = os.path.abspath(os.path.expanduser(path))
    _validate(path, owner, mode)
    folder = os.path.dirname(path)
    base = os.path.basename(path)
    if check_mode and not os.path.isdir(folder):
        return True
    folder = ensure_private_dir(folder)
    with _fileutil.locked(folder):
        owners = _read_owners(folder)
        recorded = owners.get(base)
        current = _read_existing(path)
        if recorded is not None and recorded != owner:
            raise ControllerFileError(
                "%s belongs to %s; the run for %s does not overwrite it. Give each host its "
                "own folder (the default) or a file name that carries the host, or remove "
                "the file once it is delivered." % (path, recorded, owner))
        if recorded is None and current is not None and current != data:
            raise ControllerFileError(
                "%s already exists and is not recorded as %s's; the run for %s does not "
                "overwrite it. Remove it once it is delivered, then run again." % (path, owner, owner))
        same = current == data and stat.S_IMODE(os.lstat(path).st_mode) == mode
        if same and recorded == owner:
            return False
        if check_mode:
            return True
        if not same:
            _fileutil.atomic_write(path, data, mode=mode)
        if recorded != owner:
            owners[base] = owner
            _write_owners(folder, owners)
        return True


def _read_existing(path):
    try:
        info = os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise ControllerFileError("cannot read %s: %s" % (path, exc.strerror))
    if not stat.S_ISREG(info.st_mode):
        raise ControllerFileError("%s exists and is not a regular file (a link?); not touched" % path)
    with open(path, "rb") as handle:
        return handle.read()


def remove_owned_file(path, owner, check_mode=False):
    """Remove ``path`` if it is ``owner``'s (or unrecorded); return True when removed."""
    path = os.path.abspath(os.path.expanduser(path))
    _validate(path, owner, 0o600)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        return False
    with _fileutil.locked(folder):
        owners = _read_owners(folder)
        recorded = owners.get(os.path.basename(path))
        if recorded is not None and recorded != owner:
            raise ControllerFileError("%s belongs to %s; the run for %s does not remove it"
                                      % (path, recorded, owner))
        exists = os.path.lexists(path)
        if check_mode or not (exists or recorded):
            return exists
        if exists:
            os.unlink(path)
        if recorded is not None:
            del owners[os.path.basename(path)]
            _write_owners(folder, owners)
        _fileutil.fsync_dir(folder)
        return exists


def controller_tty():
    """Path of the terminal the playbook was started from, or None.

    Ansible's worker processes start a session of their own (``setsid``), so
    ``/dev/tty`` names no terminal there: the first ancestor process that
    still has a controlling terminal (``ansible-playbook``) tells which one.
    """
    pid = os.getpid()
    for _level in range(32):
        try:
            with open("/proc/%d/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            ppid, tty_nr = int(fields[1]), int(fields[4])
        except (IOError, OSError, IndexError, ValueError):
            return None
        if tty_nr:
            for path in sorted(glob.glob("/dev/pts/[0-9]*")) + sorted(glob.glob("/dev/tty[0-9]*")):
                try:
                    if os.stat(path).st_rdev == tty_nr:
                        return path
                except OSError:
                    continue
            return None
        if ppid <= 1:
            return None
        pid = ppid
    return None


def show_on_tty(text):
    """Write ``text`` to the operator's terminal, bypassing every callback.

    Returns False when there is no terminal (CI, AWX, cron): the file is then
    the only copy, which is what those runs want. Messages from several forks
    are written one at a time (a lock on the terminal), never interleaved.
    """
    fd = None
    for path in ("/dev/tty", controller_tty()):
        if not path:
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
            break
        except OSError:
            continue
    if fd is None:
        return False
    try:
        data = text.encode("utf-8")
        if not data.endswith(b"\n"):
            data += b"\n"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        while data:
            written = os.write(fd, data)
            data = data[written:]
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
