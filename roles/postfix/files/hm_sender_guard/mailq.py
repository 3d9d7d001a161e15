# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The mail queue: ``postqueue -j`` to read, ``postsuper`` to hold, release or delete."""

from __future__ import absolute_import, division, print_function

import json
import re
import subprocess

QUEUE_ID_RE = re.compile(r"^[0-9A-Za-z]+$")


def parse_postqueue_json(text):
    """``[{queue_id, queue_name, sender, recipients}]`` from ``postqueue -j`` output (one JSON object a line)."""
    messages = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ValueError("postqueue -j line %d is not JSON (%s)" % (number, exc))
        messages.append({
            "queue_id": item.get("queue_id", ""),
            "queue_name": item.get("queue_name", ""),
            "sender": item.get("sender", ""),
            "recipients": [r.get("address", "") for r in item.get("recipients", [])],
        })
    return messages


def read_queue(postqueue="/usr/sbin/postqueue"):
    proc = subprocess.run([postqueue, "-j"], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise OSError("postqueue -j failed: %s" % proc.stderr.strip())
    return parse_postqueue_json(proc.stdout)


def postsuper(option, queue_ids, command="/usr/sbin/postsuper"):
    """Run ``postsuper <option> -`` on ``queue_ids``; returns how many were given."""
    ids = sorted(set(q for q in queue_ids if QUEUE_ID_RE.match(q)))
    if not ids:
        return 0
    proc = subprocess.run([command, option, "-"], input="\n".join(ids) + "\n", capture_output=True,
                          text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise OSError("postsuper %s failed: %s" % (option, proc.stderr.strip()))
    return len(ids)
