# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The administrator's report and the optional Prometheus text file."""

from __future__ import absolute_import, division, print_function

import collections
import subprocess
import time


def report_message(host, admin, stats, reasons, held, resume_user, window):
    """The report as an RFC 5322 message (text) for ``sendmail -t``."""
    who = stats.identity + (" (%s)" % stats.address if stats.address else "")
    domains = ", ".join("%s: %d" % item for item in stats.domains.most_common(5)) or "none seen"
    lines = [
        "From: hm-sender-guard <root>",
        "To: <%s>" % admin,
        "Subject: [%s] sender suspended: %s" % (host, who),
        "Auto-Submitted: auto-generated",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "hm-sender-guard on %s suspended a sending identity at %s." % (
            host, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())),
        "",
        "Who:        %s" % who,
        "Why:        %s" % "; ".join(reasons),
        "Last %d s:  %d messages accepted, %d bounced, %d deferred, %d refused by the quota" % (
            window, stats.messages, stats.bounced, stats.deferred, stats.quota),
        "Top recipient domains (bounced/deferred): %s" % domains,
        "Queued mail put on hold: %d message(s); nothing was deleted." % held,
        "",
        "New mail from this identity is refused (5.7.1); the user's other devices still send.",
        "",
        "What to do (docs/operations.md, 'Incident: a leaked credential'):",
        "  look:    postqueue -j | grep hold ; journalctl -t postfix/hm-identity | grep '%s'" % stats.identity,
        "  purge:   ansible-playbook hardened.mailhost.suspend_sender -e mail_user=%s -e purge=true" % resume_user,
        "  revoke:  the leaked certificate (revoke_cert.yml) or app password",
        "  resume:  ansible-playbook hardened.mailhost.resume_sender -e mail_user=%s" % resume_user,
        "           (on the host: hm-sender-guard resume --user %s)" % resume_user,
    ]
    return "\r\n".join(lines) + "\r\n"


def send(message, sendmail="/usr/sbin/sendmail"):
    proc = subprocess.run([sendmail, "-i", "-t"], input=message, capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise OSError("sendmail failed: %s" % proc.stderr.strip())


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def metrics_text(stats, queue, suspended, now):
    """Prometheus text format (node_exporter's textfile collector reads it)."""
    out = []
    for name, attr, text in (
            ("hm_sender_guard_messages", "messages", "Messages accepted per identity in the alarm window."),
            ("hm_sender_guard_bounced", "bounced", "Bounced deliveries per identity in the alarm window."),
            ("hm_sender_guard_deferred", "deferred", "Deferred deliveries per identity in the alarm window."),
            ("hm_sender_guard_quota_refusals", "quota", "Quota refusals per identity in the alarm window.")):
        out.append("# HELP %s %s" % (name, text))
        out.append("# TYPE %s gauge" % name)
        for identity in sorted(stats):
            item = stats[identity]
            out.append('%s{identity="%s",address="%s"} %d' % (name, _label(identity), _label(item.address),
                                                              getattr(item, attr)))
    by_queue = collections.Counter(m["queue_name"] for m in queue)
    out.append("# HELP hm_sender_guard_queue_messages Messages in Postfix's queues.")
    out.append("# TYPE hm_sender_guard_queue_messages gauge")
    for name in ("active", "deferred", "hold", "incoming", "maildrop"):
        out.append('hm_sender_guard_queue_messages{queue="%s"} %d' % (name, by_queue.get(name, 0)))
    out.append("# HELP hm_sender_guard_suspended Suspended identities and users.")
    out.append("# TYPE hm_sender_guard_suspended gauge")
    out.append("hm_sender_guard_suspended %d" % suspended)
    out.append("# HELP hm_sender_guard_last_run_seconds When the alarm last looked (Unix time).")
    out.append("# TYPE hm_sender_guard_last_run_seconds gauge")
    out.append("hm_sender_guard_last_run_seconds %d" % int(now))
    return "\n".join(out) + "\n"
