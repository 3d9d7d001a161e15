# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ask the privileged helper: one JSON line out, one back, over its unix socket."""

from __future__ import absolute_import, division, print_function

import json
import socket

UNAVAILABLE = {"ok": False, "status": 503,
               "error": "The portal cannot reach its certificate service right now. Try again in a minute."}


class HelperClient:
    def __init__(self, path, timeout=60):
        self.path, self.timeout = path, timeout

    def __call__(self, op, **fields):
        request = dict(fields, op=op)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
                with sock.makefile("rb") as stream:
                    line = stream.readline(4 * 1024 * 1024)
            answer = json.loads(line.decode("utf-8"))
        except (OSError, ValueError):
            return dict(UNAVAILABLE)
        return answer if isinstance(answer, dict) else dict(UNAVAILABLE)
