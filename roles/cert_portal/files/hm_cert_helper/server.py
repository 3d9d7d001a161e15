# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The helper's unix socket: one JSON request line in, one JSON answer line out.

The socket comes from systemd (``hm-cert-portal-helper.socket``, mode 0660,
group of the portal's user); the kernel's peer credentials are checked as
well, so only the portal's user (and root) is ever answered.
"""

from __future__ import absolute_import, division, print_function

import json
import logging
import os
import pwd
import socket
import socketserver
import struct
import threading

LOG = logging.getLogger("hm_cert_helper")
MAX_REQUEST = 16 * 1024
SD_LISTEN_FDS_START = 3


def peer_uid(sock):
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class Handler(socketserver.StreamRequestHandler):
    timeout = 30

    def handle(self):
        server = self.server
        uid = peer_uid(self.connection)
        if uid not in server.allowed_uids:
            LOG.warning("refused a connection from uid %d", uid)
            return
        line = self.rfile.readline(MAX_REQUEST + 1)
        if len(line) > MAX_REQUEST:
            answer = {"ok": False, "error": "request too large"}
        else:
            try:
                request = json.loads(line.decode("utf-8"))
            except ValueError:
                answer = {"ok": False, "error": "bad request"}
            else:
                answer = server.helper.handle(request)
        self.wfile.write(json.dumps(answer).encode("utf-8") + b"\n")


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, helper, allowed_uids, path=None):
        self.helper = helper
        self.allowed_uids = set(allowed_uids)
        if path is None:
            if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
                raise RuntimeError("no socket from systemd (run through hm-cert-portal-helper.socket)")
            socketserver.UnixStreamServer.__init__(self, None, Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = socket.socket(fileno=SD_LISTEN_FDS_START)
        else:
            socketserver.UnixStreamServer.__init__(self, path, Handler)


def allowed_uids(app_user):
    return {0, pwd.getpwnam(app_user).pw_uid}


def sweeper(bundles, stop, interval=5):
    """Delete expired bundles every ``interval`` seconds until ``stop`` is set."""
    while not stop.wait(interval):
        try:
            removed = bundles.sweep()
        except OSError as exc:
            LOG.error("bundle sweep failed: %s", exc)
            continue
        if removed:
            LOG.info("deleted %d expired certificate file(s)", removed)


def start_sweeper(bundles, interval=5):
    stop = threading.Event()
    thread = threading.Thread(target=sweeper, args=(bundles, stop, interval), daemon=True)
    thread.start()
    return stop
