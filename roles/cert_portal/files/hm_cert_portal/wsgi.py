# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gunicorn entry point: ``hm_cert_portal.wsgi:app`` (settings file from HM_CERT_PORTAL_SETTINGS)."""

import os

from hm_cert_portal import create_app, load_settings

app = create_app(load_settings(os.environ.get("HM_CERT_PORTAL_SETTINGS")))
