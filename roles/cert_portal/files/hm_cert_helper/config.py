# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The helper's settings: one JSON file written by the cert_portal role."""

from __future__ import absolute_import, division, print_function

import json
import re

USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")

DEFAULTS = {
    "ca_dir": "/var/lib/hardened-ca/ca",
    "passphrase_file": "/var/lib/hardened-ca/passphrase",
    "mail_domains": [],
    "users": {},
    "app_user": "hm-cert-portal",
    "bundle_dir": "/var/lib/hm-cert-portal-helper/bundles",
    "bundle_lifetime": 600,
    "code_lifetime": 600,
    "code_digits": 8,
    "code_tries": 5,
    "resend_interval": 60,
    "resend_max": 3,
    "session_idle": 900,
    "fail_window": 900,
    "fail_max_user": 10,
    "fail_max_addr": 30,
    "cert_days": 120,
    "key_type": "ec-p256",
    "pam_service": "hm-cert-portal",
    "smtp_host": "127.0.0.1",
    "smtp_port": 25,
    "mail_from": "",
    "portal_url": "",
    "host_name": "",
    "reminder_days": 14,
    "reminder_state": "/var/lib/hm-cert-portal-helper/reminded.json",
}

_INTS = ("bundle_lifetime", "code_lifetime", "code_digits", "code_tries", "resend_interval",
         "resend_max", "session_idle", "fail_window", "fail_max_user", "fail_max_addr",
         "cert_days", "smtp_port", "reminder_days")


class ConfigError(Exception):
    """A setting a user must correct; the message says which."""


def validate(raw, validate_email=None, check_identity=None):
    """Merge ``raw`` over the defaults and check it; returns the settings dict.

    ``validate_email`` / ``check_identity`` are _ca.py's (passed in so this
    module stays importable without the CA code).
    """
    if not isinstance(raw, dict):
        raise ConfigError("the settings must be a JSON object")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError("unknown settings: %s" % ", ".join(unknown))
    cfg = dict(DEFAULTS)
    cfg.update(raw)
    problems = []
    for key in _INTS:
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            problems.append("%s must be a positive integer (got %r)" % (key, cfg[key]))
    if not problems and cfg["code_digits"] < 8:
        problems.append("code_digits must be at least 8 (got %d)" % cfg["code_digits"])
    if not isinstance(cfg["mail_domains"], list) or not cfg["mail_domains"]:
        problems.append("mail_domains must list the served mail domains")
    if not isinstance(cfg["users"], dict):
        problems.append("users must map Linux user names to {email, name, notify}")
        cfg["users"] = {}
    for user, entry in sorted(cfg["users"].items()):
        if not USER_RE.match(user):
            problems.append("%r is not a Linux user name" % (user,))
            continue
        if not isinstance(entry, dict) or not all(entry.get(k) for k in ("email", "name", "notify")):
            problems.append("user %s needs email, name and notify" % user)
            continue
        if validate_email is not None:
            try:
                entry["email"] = validate_email(entry["email"])
                entry["notify"] = validate_email(entry["notify"])
                if check_identity is not None:
                    check_identity(entry["email"], cfg["mail_domains"])
            except Exception as exc:  # _ca.CAError, whose message names the problem
                problems.append("user %s: %s" % (user, exc))
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def load(path, validate_email=None, check_identity=None):
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError("cannot read the settings %s: %s" % (path, exc))
    return validate(raw, validate_email, check_identity)
