# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pages and form handlers. Every answer carries the security headers."""

from __future__ import absolute_import, division, print_function

import base64
import io
import re

from flask import (current_app, flash, get_flashed_messages, redirect, render_template, request,
                   send_file, session, url_for)
from flask_wtf.csrf import CSRFError

DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def ask(op, **fields):
    """A request to the helper on behalf of this browser (its source address added)."""
    return current_app.extensions["hm_helper"](op, addr=request.remote_addr or "-", **fields)


def page(template, status=200, **context):
    context.setdefault("settings", current_app.config["PORTAL"])
    return render_template(template, **context), status


def _ended(answer):
    """The helper says the session or the pending login is gone: start over."""
    session.clear()
    flash(answer.get("error") or "Log in again.", "error")
    return redirect(url_for("login"))


def register(app):
    @app.after_request
    def security_headers(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Same-origin: Flask-WTF checks the Referer of HTTPS form posts.
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        # Pages show passwords and certificate lists: never keep them.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    @app.errorhandler(CSRFError)
    def csrf_refused(exc):
        current_app.logger.warning("form refused (CSRF: %s) addr=%s path=%s",
                                   exc.description, request.remote_addr, request.path)
        return page("message.html", 400, title="Form not accepted",
                    message="This form was not accepted: its security token is missing or has "
                            "expired. Go back, reload the page and try again.")

    @app.errorhandler(404)
    def not_found(_exc):
        return page("message.html", 404, title="Not found", message="There is no such page here.")

    @app.errorhandler(405)
    def bad_method(_exc):
        return page("message.html", 405, title="Not allowed", message="Use the buttons on the page.")

    @app.errorhandler(413)
    def too_large(_exc):
        return page("message.html", 413, title="Too large", message="That form was too large.")

    @app.route("/", methods=["GET"])
    def login():
        if session.get("sid"):
            return redirect(url_for("certs"))
        if session.get("pending"):
            return redirect(url_for("code"))
        return page("login.html", messages=get_flashed_messages(with_categories=True))

    @app.route("/login", methods=["POST"])
    def login_post():
        user = request.form.get("user", "").strip()
        password = request.form.get("password", "")
        if not user or not password:
            return page("login.html", 400, error="Enter your user name and password.", user=user)
        answer = ask("login", user=user, password=password)
        if not answer.get("ok"):
            return page("login.html", answer.get("status", 401), error=answer.get("error"), user=user)
        session.clear()
        session.permanent = True
        session["pending"] = answer["pending"]
        session["sent_to"] = answer.get("sent_to", "")
        return redirect(url_for("code"))

    @app.route("/code", methods=["GET"])
    def code():
        if not session.get("pending"):
            return redirect(url_for("login"))
        return page("code.html", sent_to=session.get("sent_to"), messages=get_flashed_messages(with_categories=True))

    @app.route("/code", methods=["POST"])
    def code_post():
        if not session.get("pending"):
            flash("Log in first.", "error")
            return redirect(url_for("login"))
        answer = ask("verify", pending=session["pending"], code=request.form.get("code", "").strip())
        if not answer.get("ok"):
            if answer.get("login"):
                return _ended(answer)
            return page("code.html", answer.get("status", 401), error=answer.get("error"),
                        sent_to=session.get("sent_to"))
        session.clear()
        session.permanent = True
        session["sid"] = answer["session"]
        session["user"] = answer["user"]
        return redirect(url_for("certs"))

    @app.route("/code/resend", methods=["POST"])
    def code_resend():
        if not session.get("pending"):
            return redirect(url_for("login"))
        answer = ask("resend", pending=session["pending"])
        if not answer.get("ok"):
            if answer.get("login"):
                return _ended(answer)
            return page("code.html", answer.get("status", 429), error=answer.get("error"),
                        sent_to=session.get("sent_to"))
        flash("A new code was sent to %s." % answer.get("sent_to", "your address"))
        return redirect(url_for("code"))

    def certs_page(error=None, status=200):
        answer = ask("list", session=session["sid"])
        if not answer.get("ok"):
            if answer.get("login"):
                return _ended(answer)
            return page("message.html", answer.get("status", 500), title="Error", message=answer.get("error"))
        return page("certs.html", status, data=answer, error=error, messages=get_flashed_messages(with_categories=True))

    @app.route("/certs", methods=["GET"])
    def certs():
        if not session.get("sid"):
            return redirect(url_for("login"))
        return certs_page()

    @app.route("/issue", methods=["POST"])
    def issue():
        if not session.get("sid"):
            return redirect(url_for("login"))
        device = request.form.get("device", "").strip()
        if not DEVICE_RE.match(device):
            return certs_page("Device label not accepted: use 1-64 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit (for example phone or laptop-2).", 400)
        answer = ask("issue", session=session["sid"], device=device,
                     legacy=request.form.get("legacy") == "1", replace=request.form.get("replace") == "1")
        if not answer.get("ok"):
            if answer.get("login"):
                return _ended(answer)
            return certs_page(answer.get("error"), answer.get("status", 400))
        # The password is in this answer only; it is never stored or shown again.
        return page("issued.html", cert=answer)

    @app.route("/download", methods=["POST"])
    def download():
        if not session.get("sid"):
            return redirect(url_for("login"))
        answer = ask("download", session=session["sid"], bundle=request.form.get("bundle", ""))
        if not answer.get("ok"):
            if answer.get("login"):
                return _ended(answer)
            return page("message.html", answer.get("status", 410), title="Download not available",
                        message=answer.get("error"))
        data = base64.b64decode(answer["data"])
        name = "%s-%s.p12" % (answer.get("device", "certificate"), answer.get("serial", "")[:8])
        return send_file(io.BytesIO(data), mimetype="application/x-pkcs12", as_attachment=True,
                         download_name=name, max_age=0)

    @app.route("/revoke", methods=["POST"])
    def revoke():
        if not session.get("sid"):
            return redirect(url_for("login"))
        answer = ask("revoke", session=session["sid"], serial=request.form.get("serial", ""))
        if not answer.get("ok"):
            if answer.get("login"):
                return _ended(answer)
            return certs_page(answer.get("error"), answer.get("status", 400))
        flash("Certificate %s (%s) is revoked: that device can no longer send or read mail."
              % (answer["serial"], answer["device"]))
        return redirect(url_for("certs"), 303)

    @app.route("/logout", methods=["POST"])
    def logout():
        if session.get("sid"):
            ask("logout", session=session["sid"])
        session.clear()
        flash("You are logged out.")
        return redirect(url_for("login"))
