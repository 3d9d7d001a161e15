# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The certificate portal's web application (Flask, under gunicorn, unprivileged).

It parses HTTP and renders pages; everything that needs a secret of the host
(passwords, the CA key) is a request to the helper (hm_cert_helper) over its
unix socket. The Flask session cookie (signed, ``Secure; HttpOnly;
SameSite=Strict``, 15 minutes idle) only carries the helper's pending-login
or session token; Flask-WTF checks a CSRF token on every form.
"""

from __future__ import absolute_import, division, print_function

import datetime
import json
import os
import secrets

from flask import Flask
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from hm_cert_portal.helper_client import HelperClient

DEFAULTS = {
    "helper_socket": "/run/hm-cert-portal-helper/helper.sock",
    "secret_key_file": "/var/lib/hm-cert-portal/secret_key",
    "session_idle": 900,
    "title": "Mail certificates",
    "host_name": "",
}

csrf = CSRFProtect()


def _secret_key(path):
    """The cookie signing key: made once (0600) in the service's state folder."""
    try:
        with open(path, "rb") as handle:
            key = handle.read()
        if len(key) >= 32:
            return key
    except OSError:
        pass
    key = secrets.token_bytes(48)
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    os.rename(path + ".new", path)
    return key


def load_settings(path):
    settings = dict(DEFAULTS)
    if path:
        with open(path, encoding="utf-8") as handle:
            settings.update(json.load(handle))
    return settings


def create_app(settings=None, helper=None, secret_key=None):
    settings = dict(DEFAULTS, **(settings or {}))
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or _secret_key(settings["secret_key_file"]),
        SESSION_COOKIE_NAME="__Host-portal",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_REFRESH_EACH_REQUEST=True,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=settings["session_idle"]),
        # A CSRF token lives as long as the session that holds it.
        WTF_CSRF_TIME_LIMIT=settings["session_idle"],
        WTF_CSRF_SSL_STRICT=True,
        MAX_CONTENT_LENGTH=16 * 1024,
        PORTAL=settings,
    )
    # nginx in front sets X-Forwarded-For / -Proto (one proxy).
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=0)
    app.extensions["hm_helper"] = helper or HelperClient(settings["helper_socket"])
    csrf.init_app(app)
    from hm_cert_portal import views
    views.register(app)
    return app
