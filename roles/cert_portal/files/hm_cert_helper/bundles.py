# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PKCS#12 bundles waiting for their one download.

Each bundle is one 0600 file in the helper's folder, named
``<id>.<created epoch>.<serial>.<user>.p12``: the name carries all a restart
needs, so a bundle is deleted once its lifetime is over whether or not the
helper ran in between (``sweep`` at start and every few seconds). A
download claims the file by renaming it first, so two requests never both
get it.
"""

from __future__ import absolute_import, division, print_function

import os
import re
import secrets
import time

ID_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")


class BundleGone(Exception):
    """The bundle was downloaded already, has expired, or is not this user's."""


class BundleStore:
    def __init__(self, folder, lifetime=600, clock=time.time):
        self.folder, self.lifetime, self.clock = folder, lifetime, clock

    def _entries(self):
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        out = []
        for name in names:
            if not name.endswith(".p12") or name.startswith("."):
                continue
            parts = name[:-4].split(".", 3)
            if len(parts) != 4 or not parts[1].isdigit():
                continue
            out.append((name, parts[0], int(parts[1]), parts[2], parts[3]))
        return out

    def put(self, user, serial, data):
        """Store ``data`` for ``user``; returns the bundle id."""
        bundle = secrets.token_urlsafe(24)
        name = "%s.%d.%s.%s.p12" % (bundle, int(self.clock()), serial, user)
        path = os.path.join(self.folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return bundle

    def take(self, user, bundle):
        """The bundle's bytes and serial, once; BundleGone otherwise."""
        if not isinstance(bundle, str) or not ID_RE.match(bundle):
            raise BundleGone("This download link is not valid.")
        for name, ident, created, serial, owner in self._entries():
            if ident != bundle or owner != user:
                continue
            path = os.path.join(self.folder, name)
            claimed = os.path.join(self.folder, "." + name)
            try:
                os.rename(path, claimed)
            except OSError:
                break  # another request took it a moment ago
            try:
                if self.clock() - created > self.lifetime:
                    raise BundleGone("This certificate file has expired and was deleted. "
                                     "Revoke the certificate and issue a new one.")
                with open(claimed, "rb") as handle:
                    return handle.read(), serial
            finally:
                os.unlink(claimed)
        raise BundleGone("This certificate file was already downloaded or has expired "
                         "(it can be downloaded only once).")

    def pending(self, user):
        """Ids of the user's bundles still waiting (for the list page)."""
        now = self.clock()
        return [(ident, serial) for _n, ident, created, serial, owner in self._entries()
                if owner == user and now - created <= self.lifetime]

    def sweep(self):
        """Delete expired bundles and leftovers of interrupted downloads; returns the count."""
        removed = 0
        now = self.clock()
        try:
            names = os.listdir(self.folder)
        except OSError:
            return 0
        live = {entry[0] for entry in self._entries()}
        for name in names:
            path = os.path.join(self.folder, name)
            stale = name not in live  # a claimed copy or a stray file
            if not stale:
                created = int(name.split(".", 2)[1])
                stale = now - created > self.lifetime
            if stale:
                try:
                    os.unlink(path)
                    removed += 1
                except OSError:
                    pass
        return removed
