# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Abuse alarm and sender suspension for the submission ports (465/587).

Why our own code: the quotas themselves are Debian's postfwd (rate limits
keyed on the identity, persisted with ``--save_rates``); no Debian package
reads Postfix's log per sending identity, notices bounces and deferrals
piling up, suspends that one identity in a map every Postfix process reads,
holds its queued mail and mails the administrator. That is this package
(Python standard library only, run by a systemd timer and by the
suspend/resume playbooks):

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
