# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mail each portal user once when a certificate of theirs is about to expire.

Run daily by ``hm-cert-portal-remind.timer`` as the ca user; reads the CA's
index (no passphrase needed) and remembers the serials it reminded about.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import tempfile


def due(cfg, certificates, reminded):
    """(user, record) pairs to remind about now."""
    by_email = {entry["email"]: user for user, entry in cfg["users"].items()}
    out = []
    for rec in certificates:
        user = by_email.get(rec["email"])
        if user and rec["status"] == "valid" and 0 <= rec["days_left"] <= cfg["reminder_days"] \
                and rec["serial"] not in reminded:
            out.append((user, rec))
    return out


def load_state(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return set(json.load(handle))
    except (OSError, ValueError):
        return set()


def save_state(path, serials):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(sorted(serials), handle)
    os.rename(tmp, path)


def run(cfg, ca, mailer, log=print):
    info = ca.info()
    reminded = load_state(cfg["reminder_state"])
    known = {rec["serial"] for rec in info["certificates"]}
    sent = 0
    for user, rec in due(cfg, info["certificates"], reminded):
        mailer.send_reminder(cfg["users"][user]["notify"], rec["device"], rec["serial"],
                             rec["not_after"], rec["days_left"])
        reminded.add(rec["serial"])
        sent += 1
        log("reminded user=%s device=%s serial=%s not_after=%s"
            % (user, rec["device"], rec["serial"], rec["not_after"]))
    save_state(cfg["reminder_state"], reminded & known)
    return sent
