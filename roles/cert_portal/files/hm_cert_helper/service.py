# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The helper's requests: one method each, a dict in and a dict out.

Every answer is ``{"ok": True, ...}`` or ``{"ok": False, "error": message}``
with a message for the person at the browser. The user an action applies
to always comes from the helper's own session table, never from the request.
Each login, code, issue, revoke and download is logged with user, device,
serial and source address; never a password, code or bundle.
"""

from __future__ import absolute_import, division, print_function

import base64
import logging
import re
import threading

from hm_cert_helper.bundles import BundleGone
from hm_cert_helper.mailer import MailError
from hm_cert_helper.state import CodeError, Codes, Limiter, Sessions

LOG = logging.getLogger("hm_cert_helper")
ADDR_RE = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")
MAX_FIELD = 256
GENERIC_LOGIN_ERROR = "Wrong user name or password."
RATE_ERROR = "Too many failed attempts. Wait %d minutes and try again."


def _clean(value):
    """A request value as it may appear in a log line (no control characters, bounded)."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:80]) if (not text.isprintable() or " " in text or len(text) > 80) else text


def _mask(address):
    local, domain = address.rsplit("@", 1)
    return "%s***@%s" % (local[:1], domain)


class Helper:
    def __init__(self, cfg, ca_factory, authenticate, mailer, bundles, clock=None, ca_module=None):
        """``ca_factory()`` returns the CertificateAuthority; ``authenticate(user, password)``
        returns True only for the right password (PAM); ``ca_module`` is _ca.py."""
        self.cfg = cfg
        self._ca_factory = ca_factory
        self._ca = None
        self._ca_lock = threading.Lock()
        self.authenticate = authenticate
        self.mailer = mailer
        self.bundles = bundles
        self.ca_module = ca_module
        kw = {"clock": clock} if clock else {}
        self.codes = Codes(cfg["code_lifetime"], cfg["code_digits"], cfg["code_tries"],
                           cfg["resend_interval"], cfg["resend_max"], **kw)
        self.sessions = Sessions(cfg["session_idle"], **kw)
        self.user_fails = Limiter(cfg["fail_max_user"], cfg["fail_window"], **kw)
        self.addr_fails = Limiter(cfg["fail_max_addr"], cfg["fail_window"], **kw)

    # ------------------------------------------------------------ plumbing
    def handle(self, request):
        if not isinstance(request, dict):
            return {"ok": False, "error": "bad request"}
        op = request.get("op")
        method = getattr(self, "op_" + op, None) if isinstance(op, str) and op.isidentifier() else None
        if method is None:
            return {"ok": False, "error": "unknown request"}
        for key, value in request.items():
            if isinstance(value, str) and len(value) > MAX_FIELD:
                return {"ok": False, "error": "The %s is too long." % key}
        addr = request.get("addr")
        if not isinstance(addr, str) or not ADDR_RE.match(addr):
            return {"ok": False, "error": "bad request (source address)"}
        try:
            return method(request, addr)
        except Exception:  # never leak a traceback to the web process
            LOG.exception("request %s failed", op)
            return {"ok": False, "error": "Internal error; the administrator can find it in the journal."}

    def ca(self):
        if self._ca is None:
            self._ca = self._ca_factory()
        return self._ca

    def _user(self, request):
        return self.sessions.user(request.get("session"))

    def _expired(self):
        return {"ok": False, "error": "Your session has ended. Log in again.", "login": True}

    def _rate_limited(self, user, addr):
        return self.addr_fails.blocked(addr) or (user is not None and self.user_fails.blocked(user))

    def _failed(self, user, addr):
        self.addr_fails.fail(addr)
        if user is not None:
            self.user_fails.fail(user)

    # --------------------------------------------------------- first factor
    def op_login(self, request, addr):
        user, password = request.get("user"), request.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user or not password:
            return {"ok": False, "error": "Enter your user name and password."}
        known = user in self.cfg["users"]
        if self._rate_limited(user if known else None, addr):
            LOG.warning("login refused: rate limit user=%s addr=%s", _clean(user), addr)
            return {"ok": False, "error": RATE_ERROR % (self.cfg["fail_window"] // 60), "status": 429}
        # PAM runs for unknown users too, so the answer takes as long.
        good = bool(self.authenticate(user, password))
        if not (good and known):
            self._failed(user if known else None, addr)
            LOG.warning("login failed: %s user=%s addr=%s",
                        "not a portal user" if good else "wrong password or unknown user", _clean(user), addr)
            return {"ok": False, "error": GENERIC_LOGIN_ERROR, "status": 401}
        pending, code = self.codes.start(user)
        notify = self.cfg["users"][user]["notify"]
        failure = self._mail_code(user, code, addr)
        if failure:
            return failure
        LOG.info("password accepted, code mailed user=%s addr=%s to=%s", user, addr, notify)
        return {"ok": True, "pending": pending, "sent_to": _mask(notify)}

    def op_resend(self, request, addr):
        try:
            user, code = self.codes.resend(request.get("pending"))
        except CodeError as exc:
            LOG.warning("code resend refused addr=%s: %s", addr, exc)
            return {"ok": False, "error": str(exc), "login": exc.again, "status": 429}
        notify = self.cfg["users"][user]["notify"]
        failure = self._mail_code(user, code, addr)
        if failure:
            return failure
        LOG.info("code mailed again user=%s addr=%s to=%s", user, addr, notify)
        return {"ok": True, "sent_to": _mask(notify)}

    def _mail_code(self, user, code, addr):
        """Mail ``code`` to the user's outside address; a refusal dict when that fails, else None."""
        notify = self.cfg["users"][user]["notify"]
        try:
            self.mailer.send_code(notify, code, user, addr, self.cfg["code_lifetime"] // 60 or 1)
        except MailError as exc:
            LOG.error("code mail failed user=%s addr=%s to=%s: %s", user, addr, notify, exc)
            return {"ok": False, "error": "The code could not be mailed. Try again later.", "status": 503}
        return None

    # -------------------------------------------------------- second factor
    def op_verify(self, request, addr):
        pending = request.get("pending")
        user = self.codes.user_of(pending)
        if self._rate_limited(user, addr):
            LOG.warning("code refused: rate limit user=%s addr=%s", user, addr)
            return {"ok": False, "error": RATE_ERROR % (self.cfg["fail_window"] // 60), "status": 429}
        try:
            user = self.codes.verify(pending, request.get("code") if isinstance(request.get("code"), str) else "")
        except CodeError as exc:
            self._failed(user, addr)
            LOG.warning("code refused user=%s addr=%s: %s", user or "-", addr, exc)
            return {"ok": False, "error": str(exc), "login": exc.again, "status": 401}
        self.user_fails.reset(user)
        LOG.info("login complete user=%s addr=%s", user, addr)
        return {"ok": True, "session": self.sessions.create(user), "user": user}

    def op_logout(self, request, addr):
        user = self._user(request)
        self.sessions.drop(request.get("session"))
        if user:
            LOG.info("logout user=%s addr=%s", user, addr)
        return {"ok": True}

    # ----------------------------------------------------- certificates
    def _records(self, user):
        email = self.cfg["users"][user]["email"]
        with self._ca_lock:
            info = self.ca().info()
        return [rec for rec in info["certificates"] if rec["email"] == email]

    def op_list(self, request, addr):
        user = self._user(request)
        if user is None:
            return self._expired()
        certs = [{"serial": r["serial"], "device": r["device"], "not_after": r["not_after"],
                  "status": r["status"], "days_left": r["days_left"],
                  "revoked_at": r.get("revoked_at")}
                 for r in sorted(self._records(user), key=lambda r: (r["device"], r["issued_at"]))]
        waiting = [{"bundle": b, "serial": s} for b, s in self.bundles.pending(user)]
        return {"ok": True, "user": user, "email": self.cfg["users"][user]["email"],
                "certificates": certs, "bundles": waiting}

    def op_issue(self, request, addr):
        user = self._user(request)
        if user is None:
            return self._expired()
        entry = self.cfg["users"][user]
        device = request.get("device")
        legacy, replace = request.get("legacy") is True, request.get("replace") is True
        CAError = self.ca_module.CAError
        try:
            self.ca_module.validate_device(device)
        except CAError:
            LOG.warning("issue refused: bad device label user=%s device=%s addr=%s", user, _clean(device), addr)
            return {"ok": False, "status": 400, "error":
                    "Device label not accepted: use 1-64 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit (for example phone or laptop-2)."}
        try:
            with self._ca_lock:
                cert = self.ca().issue(entry["email"], entry["name"], device, days=self.cfg["cert_days"],
                                       replace=replace, key_type=self.cfg["key_type"],
                                       pkcs12_legacy=legacy, allowed_domains=self.cfg["mail_domains"])
        except CAError as exc:
            LOG.warning("issue refused user=%s device=%s addr=%s: %s", user, device, addr, exc)
            message = str(exc)
            if "already has a valid certificate" in message:
                message = ("Device %s already has a valid certificate. Tick 'replace' to revoke it and "
                           "issue a new one, or choose another device label." % device)
            return {"ok": False, "status": 409, "error": message}
        bundle = self.bundles.put(user, cert.serial, cert.pkcs12_bytes)
        replaced = [r["serial"] for r in cert.replaced]
        LOG.info("issued user=%s device=%s serial=%s not_after=%s legacy=%s replaced=%s addr=%s",
                 user, device, cert.serial, cert.record["not_after"], legacy, ",".join(replaced) or "-", addr)
        return {"ok": True, "serial": cert.serial, "device": device, "not_after": cert.record["not_after"],
                "password": cert.pkcs12_password, "bundle": bundle, "replaced": replaced,
                "lifetime": self.cfg["bundle_lifetime"]}

    def op_download(self, request, addr):
        user = self._user(request)
        if user is None:
            return self._expired()
        try:
            data, serial = self.bundles.take(user, request.get("bundle"))
        except BundleGone as exc:
            LOG.warning("download refused user=%s bundle=%s addr=%s: %s",
                        user, _clean(request.get("bundle")), addr, exc)
            return {"ok": False, "status": 410, "error": str(exc)}
        device = next((r["device"] for r in self._records(user) if r["serial"] == serial), "certificate")
        LOG.info("downloaded user=%s device=%s serial=%s addr=%s", user, device, serial, addr)
        return {"ok": True, "data": base64.b64encode(data).decode("ascii"), "device": device,
                "serial": serial}

    def op_revoke(self, request, addr):
        user = self._user(request)
        if user is None:
            return self._expired()
        CAError = self.ca_module.CAError
        raw = request.get("serial")
        try:
            serial = self.ca_module.parse_serial(raw if isinstance(raw, str) else "")
        except CAError:
            LOG.warning("revoke refused: malformed serial user=%s serial=%s addr=%s", user, _clean(raw), addr)
            return {"ok": False, "status": 400, "error": "That is not a certificate serial number."}
        mine = [r for r in self._records(user) if r["serial"] == serial]
        if not mine:
            # The same answer whether the serial is unknown or another user's.
            LOG.warning("revoke refused: not the user's certificate user=%s serial=%s addr=%s", user, serial, addr)
            return {"ok": False, "status": 403, "error": "Certificate %s is not one of yours." % serial}
        if mine[0]["status"] == "revoked":
            return {"ok": True, "serial": serial, "device": mine[0]["device"], "already": True}
        try:
            with self._ca_lock:
                self.ca().revoke(serial, reason="cessation_of_operation")
        except CAError as exc:
            LOG.error("revoke failed user=%s device=%s serial=%s addr=%s: %s",
                      user, mine[0]["device"], serial, addr, exc)
            return {"ok": False, "status": 500, "error": "The certificate could not be revoked: %s" % exc}
        LOG.info("revoked user=%s device=%s serial=%s addr=%s", user, mine[0]["device"], serial, addr)
        return {"ok": True, "serial": serial, "device": mine[0]["device"]}
