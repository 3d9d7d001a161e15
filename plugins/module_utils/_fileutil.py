# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File helpers shared by the collection's state-owning module_utils.

Private API (leading underscore): plain Python, no Ansible import, so the
logic is unit-tested directly and reused by playbook helpers and benchmarks.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import fcntl
import os
import tempfile


def atomic_write(path, data, mode=0o600, uid=None, gid=None):
    """Replace ``path`` with ``data`` (bytes or str) in one rename.

    The temporary file is created in the same folder, gets its final mode and
    owner before any content lands in it, is fsynced, and only then renamed
    over the target, so readers see either the old or the new file, never a
    partial one, and a secret is never briefly world-readable.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=folder)
    try:
        os.fchmod(fd, mode)
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        with os.fdopen(fd, "wb") as handle:
            fd = None
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
        tmp = None
        fsync_dir(folder)
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def fsync_dir(folder):
    """Make a rename in ``folder`` durable (best effort where folders cannot be synced)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError as exc:  # some filesystems refuse fsync on folders
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(dfd)


@contextlib.contextmanager
def locked(lock_path):
    """Hold an exclusive ``flock`` on ``lock_path`` while inside.

    A folder is locked through itself (no lock file left behind); any other
    path is opened as a lock file, created 0600 when missing.
    """
    if os.path.isdir(lock_path):
        fd = os.open(lock_path, os.O_RDONLY)
    else:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
