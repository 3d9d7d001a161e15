# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The alarm (``scan``) and the operator's ``suspend`` / ``resume`` of a user."""

from __future__ import absolute_import, division, print_function

import json
import os
import pwd
import re
import socket
import subprocess
import time

from hm_sender_guard import events, mailq, report
from hm_sender_guard.maps import ACTION, GuardError, Maps, atomic_write

FINGERPRINT_RE = re.compile(r"^[0-9A-F]{2}(?::[0-9A-F]{2}){31}$")
LOCAL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
MAX_JOURNAL_ENTRIES = 500000

CONFIG_INTS = {"window_seconds": (60, 86400), "lookback_seconds": (600, 30 * 86400),
               "max_bounced": (1, 1000000), "max_deferred": (1, 1000000)}


def load_config(path):
    """The JSON settings the role writes; a bad value is a GuardError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        raise GuardError("cannot read the settings %s: %s" % (path, exc))
    problems = []
    for name, (low, high) in sorted(CONFIG_INTS.items()):
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append("%s must be a whole number from %d to %d (got %r)" % (name, low, high, value))
    if not isinstance(config.get("suspend_on_quota"), bool):
        problems.append("suspend_on_quota must be true or false")
    domains = config.get("domains")
    if not isinstance(domains, list) or not domains or not all(isinstance(d, str) and DOMAIN_RE.match(d.lower()) for d in domains):
        problems.append("domains must be a non-empty list of domain names")
    for name in ("admin", "map_dir", "state_dir"):
        if not isinstance(config.get(name), str) or not config.get(name):
            problems.append("%s must be set" % name)
    if problems:
        raise GuardError("bad settings in %s: %s" % (path, "; ".join(problems)))
    config["domains"] = [d.lower() for d in domains]
    config.setdefault("clientcerts", "")
    config.setdefault("metrics_file", "")
    config.setdefault("db_type", "hash")
    return config


def read_journal(since, identifier=None, facility=None, journalctl="/usr/bin/journalctl",
                 max_entries=MAX_JOURNAL_ENTRIES):
    """Journal entries (:class:`events.Entry`) since ``since`` (Unix time), oldest first."""
    argv = [journalctl, "-q", "--no-pager", "-o", "json", "--output-fields=MESSAGE,SYSLOG_IDENTIFIER",
            "--since", "@%d" % int(since)]
    if identifier:
        argv += ["-t", identifier]
    if facility is not None:
        argv.append("SYSLOG_FACILITY=%d" % facility)
    proc = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise OSError("journalctl failed: %s" % proc.stderr.decode("utf-8", "replace").strip())
    entries = []
    for line in proc.stdout.splitlines()[:max_entries]:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        message = item.get("MESSAGE", "")
        if isinstance(message, list):  # non-UTF-8 text comes as a byte array
            message = bytes(message).decode("utf-8", "replace")
        try:
            when = int(item.get("__REALTIME_TIMESTAMP", "0")) / 1e6
        except ValueError:
            continue
        entries.append(events.Entry(when, item.get("SYSLOG_IDENTIFIER", ""), message or ""))
    return entries


def read_clientcerts(path):
    """``{FINGERPRINT: address}`` from the CA's export (empty when certificates do not relay)."""
    if not path:
        return {}
    certs = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) == 2 and FINGERPRINT_RE.match(fields[0].upper()):
                certs[fields[0].upper()] = fields[1].lower()
    return certs


def local_part(address):
    """``alice`` for ``alice``, ``alice+tag@x``, ``alice+phone`` (an app-password login)."""
    return address.lower().partition("@")[0].partition("+")[0]


class User(object):
    """A mail user as the operator names it: ``alice`` (every domain) or ``alice@example.org``."""

    def __init__(self, name, domains):
        text = (name or "").strip().lower()
        local, at, domain = text.partition("@")
        if not LOCAL_RE.match(local) or "+" in local or (at and domain not in domains):
            raise GuardError("mail_user must be a user name or <user>@<one of %s> (got %r)"
                             % (", ".join(domains), name))
        self.local = local
        self.addresses = ["%s@%s" % (local, domain)] if at else ["%s@%s" % (local, d) for d in domains]
        # check_sender_access: "user@" matches the user in every domain.
        self.sender_key = self.addresses[0] if at else local + "@"
        self.name = text

    def owns_sender(self, sender):
        sender = sender.lower()
        local, _at, domain = sender.partition("@")
        return "%s@%s" % (local.partition("+")[0], domain) in self.addresses


class Guard(object):
    def __init__(self, config, journal=read_journal, queue=mailq.read_queue, postsuper=mailq.postsuper,
                 send=report.send, now=time.time, host=None, user_exists=None):
        self.config = config
        self.maps = Maps(config["map_dir"], config["state_dir"], config["db_type"])
        self.journal = journal
        self.queue = queue
        self.postsuper = postsuper
        self.send = send
        self.now = now
        self.host = host or socket.getfqdn()
        self.user_exists = user_exists or _system_user_exists

    # ------------------------------------------------------------ the alarm
    def scan(self):
        now = self.now()
        config = self.config
        since = now - config["window_seconds"]
        certs = read_clientcerts(config["clientcerts"])
        older = self.journal(now - config["lookback_seconds"], identifier=events.IDENTITY_TAG)
        queue_ids = events.identity_of_lines(older)
        entries = self.journal(since, facility=2)
        queue = self.queue()
        suspended_now = []
        with self.maps.lock():
            state = self.maps.read_state()
            resumed = state["resumed"]

            def ignore_before(identity):
                kind, _sep, key = identity.partition(":")
                owner = certs.get(key, "") if kind == "cert" else key
                return max(resumed.get(identity, 0), resumed.get("user:" + local_part(owner), 0) if owner else 0)

            stats = events.count(entries, since, queue_ids, ignore_before)
            for identity in sorted(stats):
                item = stats[identity]
                reasons = events.crossed(item, config)
                if not reasons or identity in state["suspended"]:
                    continue
                if not item.address and identity.startswith("cert:"):
                    item.address = certs.get(identity[5:], "")
                held = self._suspend_identity(identity, item, reasons, queue_ids, queue, state, now)
                suspended_now.append({"identity": identity, "address": item.address, "reasons": reasons,
                                      "held": held})
            self.maps.write_state(state)
            suspended_total = len(state["suspended"])
        for entry in suspended_now:
            owner = entry["address"] or entry["identity"].partition(":")[2]
            message = report.report_message(self.host, config["admin"], stats[entry["identity"]], entry["reasons"],
                                            entry["held"], local_part(owner), config["window_seconds"])
            self.send(message)
        if config["metrics_file"]:
            atomic_write(config["metrics_file"], report.metrics_text(stats, queue, suspended_total, now))
        return {"changed": bool(suspended_now), "suspended": suspended_now,
                "identities": {k: v.as_dict() for k, v in sorted(stats.items())}, "queue": len(queue)}

    def _suspend_identity(self, identity, stats, reasons, queue_ids, queue, state, now):
        kind, _sep, key = identity.partition(":")
        name = "suspended_ccert" if kind == "cert" else "suspended_sasl"
        entries = self.maps.read(name)
        entries[key] = ACTION
        self.maps.write(name, entries)
        state["suspended"][identity] = {"since": int(now), "reasons": reasons, "address": stats.address,
                                        "by": "alarm"}
        mine = [m["queue_id"] for m in queue
                if queue_ids.get(m["queue_id"], ("",))[0] == identity and m["queue_name"] != "hold"]
        held = self.postsuper("-h", mine)
        state["held"].update((queue_id, identity) for queue_id in mine)
        return held

    # ------------------------------------------------------ the operator's
    def _user(self, name):
        user = User(name, self.config["domains"])
        certs = read_clientcerts(self.config["clientcerts"])
        fingerprints = sorted(fp for fp, address in certs.items() if address in user.addresses)
        if not fingerprints and not self.user_exists(user.local):
            raise GuardError("unknown mail user %r: no local account and no valid certificate for %s"
                             % (name, ", ".join(user.addresses)))
        return user, fingerprints

    def suspend_user(self, name, purge=False, check=False):
        user, fingerprints = self._user(name)
        with self.maps.lock():
            senders = self.maps.read("suspended_senders")
            already = senders.get(user.sender_key) == ACTION
            mine = [m for m in self.queue() if user.owns_sender(m["sender"])]
            targets = [m["queue_id"] for m in mine if purge or m["queue_name"] != "hold"]
            result = {"user": user.name, "addresses": user.addresses, "certificates": len(fingerprints),
                      "already_suspended": already, "held": 0, "deleted": 0,
                      "changed": not already or bool(targets)}
            if check:
                result["held" if not purge else "deleted"] = len(targets)
                return result
            state = self.maps.read_state()
            if not already:
                senders[user.sender_key] = ACTION
                self.maps.write("suspended_senders", senders)
                state["suspended"]["user:" + user.sender_key] = {"since": int(self.now()), "by": "operator",
                                                                 "reasons": ["suspended by the operator"]}
            if purge:
                for queue_id in targets:
                    state["held"].pop(queue_id, None)
            else:
                state["held"].update((queue_id, "user:" + user.sender_key) for queue_id in targets)
            if not already or targets:
                self.maps.write_state(state)
            result["deleted" if purge else "held"] = self.postsuper("-d" if purge else "-h", targets)
        return result

    def resume_user(self, name, check=False):
        user, fingerprints = self._user(name)
        with self.maps.lock():
            current = self.maps.read_all()
            state = self.maps.read_state()
            keep = {
                "suspended_senders": {k: v for k, v in current["suspended_senders"].items()
                                      if k not in (user.sender_key, user.local + "@") and k not in user.addresses},
                "suspended_ccert": {k: v for k, v in current["suspended_ccert"].items() if k not in fingerprints},
                "suspended_sasl": {k: v for k, v in current["suspended_sasl"].items() if local_part(k) != user.local},
            }
            removed = sorted(k for name_ in keep for k in current[name_] if k not in keep[name_])
            queue = self.queue()
            # Only what the guard held (the alarm or suspend_sender.yml); mail on hold
            # for another reason (an operator's postsuper -h) stays on hold.
            held = [m["queue_id"] for m in queue if m["queue_name"] == "hold" and user.owns_sender(m["sender"])
                    and m["queue_id"] in state["held"]]
            # Records of mail that left the queue (delivered, deleted) are dropped.
            present = set(m["queue_id"] for m in queue)
            stale = [q for q in state["held"] if q not in present]
            result = {"user": user.name, "addresses": user.addresses, "removed": removed,
                      "released": len(held), "changed": bool(removed or held)}
            if check:
                return result
            for name_ in keep:
                if keep[name_] != current[name_]:
                    self.maps.write(name_, keep[name_])
            now = int(self.now())
            for identity in list(state["suspended"]):
                kind, _sep, key = identity.partition(":")
                owner = (state["suspended"][identity].get("address") or key) if kind != "user" else key
                if local_part(owner) == user.local:
                    del state["suspended"][identity]
                    state["resumed"][identity] = now
            state["resumed"]["user:" + user.local] = now
            for queue_id in held + stale:
                state["held"].pop(queue_id, None)
            if result["changed"] or stale:
                self.maps.write_state(state)
            result["released"] = self.postsuper("-H", held)
        return result

    def status(self):
        with self.maps.lock():
            return {"maps": self.maps.read_all(), "state": self.maps.read_state()}


def _system_user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def ensure_dirs(config):
    os.makedirs(config["state_dir"], mode=0o700, exist_ok=True)
