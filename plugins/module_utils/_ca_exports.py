# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the client CA hands to the mail services, in ``<ca_dir>/export/``.

Private API (leading underscore), no Ansible import.

``postfix_relay_clientcerts``
    ``<SHA-256 fingerprint> <email>`` per certificate valid now, sorted: the
    source of Postfix's ``relay_clientcerts`` map. Postfix never reads CRLs,
    so revocation (and expiry) for SMTP is the removal of a line here.
``dovecot_ca_crl.pem``
    the CA certificate followed by the current CRL, Dovecot's client CA file.

Both are derived from the index and the CRL, rewritten only when their
content changes, mode 0600.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat
import tempfile

from ansible_collections.hardened.mailhost.plugins.module_utils._ca_common import (
    CAError,
    iso,
    make_private_dir,
    utcnow,
)

EXPORT_DIR = "export"
POSTFIX_EXPORT = "postfix_relay_clientcerts"
DOVECOT_EXPORT = "dovecot_ca_crl.pem"


def postfix_map_text(index, now=None):
    stamp = iso(now or utcnow())
    rows = sorted((rec["email"], rec["device"], rec["fingerprint_sha256"])
                  for rec in index["certificates"]
                  if rec["state"] == "valid" and rec["not_before"] <= stamp < rec["not_after"])
    return "".join("%s %s\n" % (fp, email) for email, _device, fp in rows)


def write_derived(path, data):
    """Atomic replace without fsync, for the exports only.

    They are derived from the index (which is fsynced) and rewritten by every
    later run, so they skip the two fsyncs that would double the cost of an
    issue on a busy disk. Mode 0600 is set before any content is written.
    """
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=os.path.dirname(path))
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            fd = None
            handle.write(data)
        os.rename(tmp, path)
        tmp = None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_if_changed(path, data):
    """Write ``data`` unless ``path`` already holds it with mode 0600; returns changed."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        with open(path, "rb") as handle:
            if handle.read() == data and stat.S_IMODE(os.stat(path).st_mode) == 0o600:
                return False
    except (IOError, OSError):
        pass
    write_derived(path, data)
    return True


class Exports:
    """The two export files of the CA in ``ca_dir`` (callers hold the CA lock)."""

    def __init__(self, ca_dir, ca_cert_path, crl_path):
        self.ca_dir = ca_dir
        self.folder = os.path.join(ca_dir, EXPORT_DIR)
        self.postfix_path = os.path.join(self.folder, POSTFIX_EXPORT)
        self.dovecot_path = os.path.join(self.folder, DOVECOT_EXPORT)
        self.ca_cert_path = ca_cert_path
        self.crl_path = crl_path

    def _dovecot_text(self):
        with open(self.ca_cert_path, "rb") as handle:
            data = handle.read()
        try:
            with open(self.crl_path, "rb") as handle:
                return data + handle.read()
        except (IOError, OSError):
            raise CAError("no CRL in %s yet: run the CRL refresh first" % self.ca_dir)

    def write_postfix(self, index, now=None):
        make_private_dir(self.folder)
        return write_if_changed(self.postfix_path, postfix_map_text(index, now))

    def write_dovecot(self):
        make_private_dir(self.folder)
        return write_if_changed(self.dovecot_path, self._dovecot_text())

    def write(self, index, now=None):
        """Both files; returns whether either changed."""
        changed = self.write_postfix(index, now)
        return self.write_dovecot() or changed

    def current(self, index, now=None):
        """True when both files hold what ``write`` would write."""
        try:
            with open(self.postfix_path, "rb") as handle:
                if handle.read() != postfix_map_text(index, now).encode("utf-8"):
                    return False
            wanted = self._dovecot_text()
            with open(self.dovecot_path, "rb") as handle:
                return handle.read() == wanted
        except (IOError, OSError, CAError):
            return False
