"""The web application (hm_cert_portal) with Flask's test client, wired to a
real helper over a throwaway CA. Every bad input gets a clear message and
changes nothing."""

import base64
import re

import pytest
from conftest import PASSWORDS

from cryptography.hazmat.primitives.serialization import pkcs12
from hm_cert_portal import create_app

BASE = "https://portal.example.test"


@pytest.fixture()
def portal(env):
    calls = []

    def helper(op, **fields):
        calls.append((op, fields))
        return env.helper.handle(dict(fields, op=op))

    app = create_app({"host_name": "mail.example.test", "session_idle": 900}, helper=helper,
                     secret_key=b"k" * 48)
    app.config["TESTING"] = True
    env.app, env.calls = app, calls
    return env


def client(portal):
    """A browser behind nginx: every request arrives with nginx's forwarding headers."""
    web = portal.app.test_client()
    web.environ_base.update({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.20",
                             "HTTP_X_FORWARDED_PROTO": "https"})
    return web


def token(response):
    match = re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True))
    assert match, response.get_data(as_text=True)
    return match.group(1)


def post(web, path, page, **form):
    form.setdefault("csrf_token", token(page))
    return web.post(BASE + path, data=form, headers={"Referer": BASE + "/"})


def log_in(portal, web, user="alice"):
    page = web.get(BASE + "/")
    out = post(web, "/login", page, user=user, password=PASSWORDS[user])
    assert out.status_code == 302 and out.headers["Location"].endswith("/code")
    page = web.get(BASE + "/code")
    code = portal.mailer.codes[-1][1]
    out = post(web, "/code", page, code=code)
    assert out.status_code == 302 and out.headers["Location"].endswith("/certs"), out.get_data(as_text=True)
    return web.get(BASE + "/certs")


def issue(portal, web, page, device="phone", **extra):
    return post(web, "/issue", page, device=device, **extra)


def test_the_whole_flow(portal):
    web = client(portal)
    certs = log_in(portal, web)
    assert certs.status_code == 200 and "alice@example.test" in certs.get_data(as_text=True)
    issued = issue(portal, web, certs)
    body = issued.get_data(as_text=True)
    password = re.search(r'id="p12-password">([^<]+)<', body).group(1)
    serial = re.search(r'id="serial">([0-9A-F]+)<', body).group(1)
    assert issued.headers["Cache-Control"] == "no-store"
    got = post(web, "/download", issued, bundle=re.search(r'name="bundle" value="([^"]+)"', body).group(1))
    assert got.status_code == 200 and got.headers["Content-Type"] == "application/x-pkcs12"
    assert "attachment" in got.headers["Content-Disposition"] and got.headers["Cache-Control"] == "no-store"
    cert = pkcs12.load_key_and_certificates(got.get_data(), password.encode())[1]
    assert cert.serial_number == int(serial, 16)
    listed = web.get(BASE + "/certs").get_data(as_text=True)
    assert serial in listed and password not in listed
    out = post(web, "/revoke", web.get(BASE + "/certs"), serial=serial)
    assert out.status_code == 303
    assert "is revoked" in web.get(BASE + "/certs").get_data(as_text=True)
    assert portal.ca.info()["certificates"][0]["state"] == "revoked"
    # The source address the helper saw is the browser's, from nginx's header.
    assert {f["addr"] for _op, f in portal.calls} == {"198.51.100.20"}


def test_security_headers_and_cookie_flags(portal):
    web = client(portal)
    page = web.get(BASE + "/")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    cookie = page.headers["Set-Cookie"]
    for flag in ("__Host-portal=", "Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    assert "Domain=" not in cookie


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("nobody", "x"), ("carol", PASSWORDS["carol"])])
def test_wrong_password_or_unknown_user(portal, user, password):
    web = client(portal)
    out = post(web, "/login", web.get(BASE + "/"), user=user, password=password)
    assert out.status_code == 401 and "Wrong user name or password." in out.get_data(as_text=True)
    assert portal.mailer.codes == []
    assert web.get(BASE + "/certs").status_code == 302


def test_empty_login_fields(portal):
    web = client(portal)
    out = post(web, "/login", web.get(BASE + "/"), user="", password="")
    assert out.status_code == 400 and "Enter your user name and password." in out.get_data(as_text=True)
    assert portal.calls == []


def test_missing_csrf_token_is_refused(portal):
    web = client(portal)
    web.get(BASE + "/")
    out = web.post(BASE + "/login", data={"user": "alice", "password": PASSWORDS["alice"]},
                   headers={"Referer": BASE + "/"})
    assert out.status_code == 400 and "security token is missing" in out.get_data(as_text=True)
    assert portal.calls == [] and portal.mailer.codes == []


def test_missing_csrf_token_on_revoke_changes_nothing(portal):
    web = client(portal)
    certs = log_in(portal, web)
    serial = re.search(r'id="serial">([0-9A-F]+)<', issue(portal, web, certs).get_data(as_text=True)).group(1)
    out = web.post(BASE + "/revoke", data={"serial": serial}, headers={"Referer": BASE + "/"})
    assert out.status_code == 400
    assert portal.ca.info()["certificates"][0]["state"] == "valid"


def test_token_of_another_session_is_refused(portal):
    web, other = client(portal), client(portal)
    foreign = token(other.get(BASE + "/"))
    out = post(web, "/login", web.get(BASE + "/"), user="alice", password=PASSWORDS["alice"], csrf_token=foreign)
    assert out.status_code == 400 and portal.calls == []


def test_wrong_code_then_reused_code(portal):
    web = client(portal)
    post(web, "/login", web.get(BASE + "/"), user="alice", password=PASSWORDS["alice"])
    code = portal.mailer.codes[-1][1]
    wrong = "%08d" % ((int(code) + 1) % 10 ** 8)
    out = post(web, "/code", web.get(BASE + "/code"), code=wrong)
    assert out.status_code == 401 and "Wrong code" in out.get_data(as_text=True)
    # Keep the browser's cookie (the pending login) as it was before the right code.
    before = web.get_cookie("__Host-portal", domain="portal.example.test").value
    assert post(web, "/code", web.get(BASE + "/code"), code=code).status_code == 302
    # Replaying the same pending login with the same code, from a copy of that cookie.
    replay = client(portal)
    replay.set_cookie("__Host-portal", before, domain="portal.example.test", secure=True)
    out = post(replay, "/code", replay.get(BASE + "/code"), code=code)
    assert out.status_code == 302
    assert "already used or has expired" in replay.get(BASE + "/").get_data(as_text=True)
    assert replay.get(BASE + "/certs").status_code == 302


def test_expired_code(portal):
    web = client(portal)
    post(web, "/login", web.get(BASE + "/"), user="alice", password=PASSWORDS["alice"])
    code = portal.mailer.codes[-1][1]
    page = web.get(BASE + "/code")
    portal.clock.now += 601
    out = post(web, "/code", page, code=code)
    assert out.status_code == 302
    assert "The code has expired" in web.get(BASE + "/").get_data(as_text=True)
    assert web.get(BASE + "/certs").status_code == 302


def test_resend_is_rate_limited(portal):
    web = client(portal)
    post(web, "/login", web.get(BASE + "/"), user="alice", password=PASSWORDS["alice"])
    out = post(web, "/code/resend", web.get(BASE + "/code"))
    assert out.status_code == 429 and "can be sent in" in out.get_data(as_text=True)
    assert len(portal.mailer.codes) == 1


@pytest.mark.parametrize("device", ["", "my phone", "../x", "-x", "a" * 65, "<script>"])
def test_bad_device_label(portal, device):
    web = client(portal)
    out = issue(portal, web, log_in(portal, web), device=device)
    assert out.status_code == 400 and "Device label not accepted" in out.get_data(as_text=True)
    assert "<script>" not in out.get_data(as_text=True)
    assert portal.ca.info()["certificates"] == []


def test_duplicate_device_and_replace(portal):
    web = client(portal)
    certs = log_in(portal, web)
    issue(portal, web, certs)
    dup = issue(portal, web, web.get(BASE + "/certs"))
    assert dup.status_code == 409 and "already has a valid certificate" in dup.get_data(as_text=True)
    again = issue(portal, web, web.get(BASE + "/certs"), replace="1")
    assert again.status_code == 200 and "Replaced and revoked" in again.get_data(as_text=True)


@pytest.mark.parametrize("serial", ["not-hex", "1' OR '1'='1", ""])
def test_forged_serial(portal, serial):
    web = client(portal)
    certs = log_in(portal, web)
    issue(portal, web, certs)
    out = post(web, "/revoke", web.get(BASE + "/certs"), serial=serial)
    assert out.status_code == 400 and "not a certificate serial" in out.get_data(as_text=True)
    assert portal.ca.info()["certificates"][0]["state"] == "valid"


def test_another_users_serial(portal):
    bob = client(portal)
    bobs = issue(portal, bob, log_in(portal, bob, "bob"), device="laptop")
    serial = re.search(r'id="serial">([0-9A-F]+)<', bobs.get_data(as_text=True)).group(1)
    alice = client(portal)
    out = post(alice, "/revoke", log_in(portal, alice), serial=serial)
    assert out.status_code == 403 and "is not one of yours" in out.get_data(as_text=True)
    assert portal.ca.info()["certificates"][0]["state"] == "valid"


def test_second_download_is_refused(portal):
    web = client(portal)
    issued = issue(portal, web, log_in(portal, web))
    bundle = re.search(r'name="bundle" value="([^"]+)"', issued.get_data(as_text=True)).group(1)
    assert post(web, "/download", issued, bundle=bundle).status_code == 200
    out = post(web, "/download", issued, bundle=bundle)
    assert out.status_code == 410 and "only once" in out.get_data(as_text=True)


def test_session_ends_after_15_idle_minutes(portal):
    web = client(portal)
    log_in(portal, web)
    portal.clock.now += 901
    out = web.get(BASE + "/certs")
    assert out.status_code == 302
    assert "Your session has ended" in web.get(BASE + "/").get_data(as_text=True)
    cookie_age = portal.app.config["PERMANENT_SESSION_LIFETIME"].total_seconds()
    assert cookie_age == 900


def test_logout_ends_the_helper_session(portal):
    web = client(portal)
    certs = log_in(portal, web)
    with web.session_transaction(BASE + "/") as sess:
        sid = sess["sid"]
    post(web, "/logout", certs)
    assert portal.helper.sessions.user(sid) is None


def test_helper_down_gives_a_clear_page(env):
    from hm_cert_portal.helper_client import HelperClient
    app = create_app({}, helper=HelperClient("/nonexistent/helper.sock"), secret_key=b"k" * 48)
    web = app.test_client()
    out = post(web, "/login", web.get(BASE + "/"), user="alice", password="x")
    assert out.status_code == 503 and "cannot reach its certificate service" in out.get_data(as_text=True)


def test_pages_are_small_and_scriptless(portal):
    web = client(portal)
    for page in (web.get(BASE + "/"), log_in(portal, web)):
        html = page.get_data(as_text=True)
        assert "<script" not in html and len(html) < 8000
    assert base64  # (used by other tests)


@pytest.mark.parametrize("referer", [None, "https://evil.example/", "http://portal.example.test/"])
def test_post_from_another_origin_is_refused(portal, referer):
    web = client(portal)
    page = web.get(BASE + "/")
    headers = {"Referer": referer} if referer else {}
    out = web.post(BASE + "/login", data={"csrf_token": token(page), "user": "alice",
                                          "password": PASSWORDS["alice"]}, headers=headers)
    assert out.status_code == 400 and portal.calls == []
    assert page.headers["Referrer-Policy"] == "same-origin"
