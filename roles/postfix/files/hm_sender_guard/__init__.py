# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Abuse alarm and sender suspension for the submission ports (465/587).

Why our own code: no Debian package reads Postfix's log per sending
identity, notices bounces and deferrals piling up, suspends that one identity
in a map every Postfix process reads, holds its queued mail and mails the
administrator. That is this package (Python standard library only, run by a
systemd timer and by the suspend/resume playbooks).

The quotas are ours too, for another reason: they were Debian's postfwd
(``rate()``/``rcpt()`` keyed on ``ccert_fingerprint`` or ``sasl_username``),
which cost about 5 ms of CPU per message and +195 ms p99 at the end of DATA
(docs/benchmarks/policy.md, run 3); Debian's policyd-rate-limit keys only on
the SASL user name or the client IP address, not on a certificate. The
policy service (``ccert_sender_policy.py``) is asked at the end of every
message anyway, so it counts there (``hm_sender_quota.py``, one SQLite
transaction per message, shared by all its processes, kept over restarts)
and refuses with the ``(hm-quota <rule> <identity>)`` marker
``events.QUOTA_RE`` reads.

The modules:

* ``events``   — parses the mail log lines (journal) into per-identity
  counters: messages (the ``postfix/hm-identity`` line of each accepted
  message), bounced and deferred deliveries, quota refusals; pure functions.
* ``maps``     — the suspension maps (``check_ccert_access``,
  ``check_sasl_access``, ``check_sender_access`` tables), written atomically
  and built with ``postmap`` under one lock; the guard's state file.
* ``mailq``    — ``postqueue -j`` and ``postsuper`` (hold, release, delete).
* ``report``   — the administrator's report and the Prometheus text file.
* ``__main__`` — the command line: ``scan``, ``suspend``, ``resume``, ``status``.
"""
