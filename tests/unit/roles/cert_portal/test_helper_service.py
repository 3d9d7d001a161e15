"""The privileged helper's requests (hm_cert_helper.service) over a real CA.

Every refusal is checked to change nothing: no code mailed, no session, no
certificate issued or revoked.
"""

import logging

import pytest
from conftest import PASSWORDS, login, settings

from ansible_collections.hardened.mailhost.plugins.module_utils import _ca
from hm_cert_helper import config

ADDR = "192.0.2.10"


def ask(env, op, **fields):
    fields.setdefault("addr", ADDR)
    return env.helper.handle(dict(fields, op=op))


def state_of(env):
    return [(r["serial"], r["state"]) for r in env.ca.info()["certificates"]]


# ------------------------------------------------------------------ login

def test_password_then_mailed_code_opens_a_session(env):
    answer = ask(env, "login", user="alice", password=PASSWORDS["alice"])
    assert answer["ok"] and answer["sent_to"] == "a***@outside.example"
    rcpt, code = env.mailer.codes[-1]
    assert rcpt == "alice@outside.example"
    assert len(code) >= 8 and code.isdigit()
    done = ask(env, "verify", pending=answer["pending"], code=code)
    assert done["ok"] and done["user"] == "alice"
    assert ask(env, "list", session=done["session"])["ok"]


@pytest.mark.parametrize("user,password", [
    ("alice", "wrong"),            # wrong password
    ("mallory", "anything"),       # unknown user
    ("carol", PASSWORDS["carol"]),  # right Linux password, but not a portal user
    ("", "x"), ("alice", ""),
])
def test_bad_login_mails_nothing(env, user, password):
    answer = ask(env, "login", user=user, password=password)
    assert not answer["ok"]
    assert answer["error"] in ("Wrong user name or password.", "Enter your user name and password.")
    assert env.mailer.codes == []


def test_code_is_single_use(env):
    answer = ask(env, "login", user="alice", password=PASSWORDS["alice"])
    code = env.mailer.codes[-1][1]
    assert ask(env, "verify", pending=answer["pending"], code=code)["ok"]
    again = ask(env, "verify", pending=answer["pending"], code=code)
    assert not again["ok"] and again["login"] and "already used" in again["error"]


def test_expired_code_is_refused(env):
    answer = ask(env, "login", user="alice", password=PASSWORDS["alice"])
    code = env.mailer.codes[-1][1]
    env.clock.now += env.cfg["code_lifetime"] + 1
    late = ask(env, "verify", pending=answer["pending"], code=code)
    assert not late["ok"] and "expired" in late["error"] and late["login"]


def test_five_wrong_codes_end_the_login(env):
    answer = ask(env, "login", user="alice", password=PASSWORDS["alice"])
    code = env.mailer.codes[-1][1]
    wrong = "%08d" % ((int(code) + 1) % 10 ** 8)
    for attempt in range(1, 5):
        out = ask(env, "verify", pending=answer["pending"], code=wrong)
        assert not out["ok"] and not out["login"] and "%d" % (5 - attempt) in out["error"]
    out = ask(env, "verify", pending=answer["pending"], code=wrong)
    assert out["login"] and "Too many wrong codes" in out["error"]
    # Even the right code no longer works.
    assert not ask(env, "verify", pending=answer["pending"], code=code)["ok"]


def test_codes_are_stored_hashed(env):
    answer = ask(env, "login", user="alice", password=PASSWORDS["alice"])
    code = env.mailer.codes[-1][1]
    entry = env.helper.codes._pending[answer["pending"]]
    assert code not in repr(entry) and code.encode() not in b"".join(
        v for v in entry.values() if isinstance(v, bytes))


def test_resend_is_rate_limited_and_replaces_the_code(env):
    answer = ask(env, "login", user="alice", password=PASSWORDS["alice"])
    first = env.mailer.codes[-1][1]
    soon = ask(env, "resend", pending=answer["pending"])
    assert not soon["ok"] and "seconds" in soon["error"] and len(env.mailer.codes) == 1
    env.clock.now += 61
    assert ask(env, "resend", pending=answer["pending"])["ok"]
    second = env.mailer.codes[-1][1]
    if first != second:
        assert not ask(env, "verify", pending=answer["pending"], code=first)["ok"]
    assert ask(env, "verify", pending=answer["pending"], code=second)["ok"]


def test_resend_count_is_bounded(env):
    answer = ask(env, "login", user="alice", password=PASSWORDS["alice"])
    for _round in range(env.cfg["resend_max"]):
        env.clock.now += 61
        assert ask(env, "resend", pending=answer["pending"])["ok"]
    env.clock.now += 61
    out = ask(env, "resend", pending=answer["pending"])
    assert not out["ok"] and "No more codes" in out["error"]


def test_password_guessing_is_limited_per_user_and_per_address(env):
    for number in range(env.cfg["fail_max_user"]):
        ask(env, "login", user="alice", password="guess", addr="198.51.100.%d" % number)
    # From a fresh address the right password is refused too: the user is locked.
    out = ask(env, "login", user="alice", password=PASSWORDS["alice"], addr="203.0.113.5")
    assert out["status"] == 429 and env.mailer.codes == []
    # bob is not affected; after the window alice may log in again.
    assert ask(env, "login", user="bob", password=PASSWORDS["bob"], addr="203.0.113.5")["ok"]
    env.clock.now += env.cfg["fail_window"] + 1
    assert ask(env, "login", user="alice", password=PASSWORDS["alice"], addr="203.0.113.5")["ok"]


def test_one_address_cannot_spray_many_users(env):
    for number in range(env.cfg["fail_max_addr"]):
        ask(env, "login", user="user%d" % number, password="guess", addr="198.51.100.7")
    out = ask(env, "login", user="bob", password=PASSWORDS["bob"], addr="198.51.100.7")
    assert out["status"] == 429 and env.mailer.codes == []


def test_mail_failure_is_reported(env):
    env.mailer.fail = True
    out = ask(env, "login", user="alice", password=PASSWORDS["alice"])
    assert not out["ok"] and "could not be mailed" in out["error"]


def test_session_ends_after_idle_time(env):
    session = login(env)
    env.clock.now += env.cfg["session_idle"] - 5
    assert ask(env, "list", session=session)["ok"]        # activity restarts the clock
    env.clock.now += env.cfg["session_idle"] + 1
    out = ask(env, "list", session=session)
    assert not out["ok"] and out["login"]


@pytest.mark.parametrize("request_", [
    {"op": "list", "session": "forged"},
    {"op": "issue", "session": None, "device": "phone"},
    {"op": "revoke", "session": "", "serial": "01"},
    {"op": "download", "session": "x", "bundle": "y" * 30},
])
def test_no_session_no_action(env, request_):
    before = state_of(env)
    out = env.helper.handle(dict(request_, addr=ADDR))
    assert not out["ok"] and out["login"]
    assert state_of(env) == before


def test_bad_requests(env):
    assert env.helper.handle([1, 2])["error"] == "bad request"
    assert env.helper.handle({"op": "__init__", "addr": ADDR})["error"] == "unknown request"
    assert "source address" in env.helper.handle({"op": "list", "addr": "x\ny"})["error"]
    assert "too long" in env.helper.handle({"op": "login", "user": "a" * 300, "password": "p", "addr": ADDR})["error"]


# ------------------------------------------------------------ certificates

def test_issue_list_download_once_revoke(env):
    session = login(env)
    out = ask(env, "issue", session=session, device="phone")
    assert out["ok"] and len(out["password"]) >= 16
    rec = [r for r in env.ca.info()["certificates"] if r["serial"] == out["serial"]][0]
    assert (rec["email"], rec["name"], rec["device"]) == ("alice@example.test", "Alice Example", "phone")
    listed = ask(env, "list", session=session)
    assert [c["serial"] for c in listed["certificates"]] == [out["serial"]]
    assert listed["bundles"] == [{"bundle": out["bundle"], "serial": out["serial"]}]
    got = ask(env, "download", session=session, bundle=out["bundle"])
    assert got["ok"] and got["device"] == "phone"
    import base64

    from cryptography.hazmat.primitives.serialization import pkcs12
    key, cert, _chain = pkcs12.load_key_and_certificates(base64.b64decode(got["data"]), out["password"].encode())
    assert cert.serial_number == int(out["serial"], 16) and key is not None
    second = ask(env, "download", session=session, bundle=out["bundle"])
    assert second["status"] == 410 and "only once" in second["error"]
    assert list(env.bundle_dir.iterdir()) == []
    gone = ask(env, "revoke", session=session, serial=out["serial"])
    assert gone["ok"]
    assert env.ca.info()["certificates"][0]["state"] == "revoked"
    assert out["serial"] in env.ca.crl_status()["revoked_serials"]


def test_duplicate_device_needs_replace(env):
    session = login(env)
    first = ask(env, "issue", session=session, device="phone")
    dup = ask(env, "issue", session=session, device="phone")
    assert not dup["ok"] and dup["status"] == 409 and "replace" in dup["error"]
    assert len(env.ca.info()["certificates"]) == 1
    new = ask(env, "issue", session=session, device="phone", replace=True)
    assert new["ok"] and new["replaced"] == [first["serial"]]
    states = {r["serial"]: (r["state"], r["revocation_reason"]) for r in env.ca.info()["certificates"]}
    assert states == {first["serial"]: ("revoked", "superseded"), new["serial"]: ("valid", None)}


def test_legacy_bundle_opens(env):
    session = login(env)
    out = ask(env, "issue", session=session, device="old-iphone", legacy=True)
    import base64

    from cryptography.hazmat.primitives.serialization import pkcs12
    data = base64.b64decode(ask(env, "download", session=session, bundle=out["bundle"])["data"])
    assert pkcs12.load_key_and_certificates(data, out["password"].encode())[1] is not None


@pytest.mark.parametrize("device", ["", "-phone", "my phone", "ph/one", "x" * 65, "tel\u00e9fono", None, 5])
def test_bad_device_label_issues_nothing(env, device):
    session = login(env)
    out = ask(env, "issue", session=session, device=device)
    assert not out["ok"] and out["status"] == 400 and "Device label" in out["error"]
    assert env.ca.info()["certificates"] == [] and list(env.bundle_dir.iterdir()) == []


def test_another_users_serial_cannot_be_revoked(env):
    bob = login(env, "bob")
    bobs = ask(env, "issue", session=bob, device="laptop")
    alice = login(env, "alice")
    before = state_of(env)
    out = ask(env, "revoke", session=alice, serial=bobs["serial"])
    assert not out["ok"] and out["status"] == 403 and "not one of yours" in out["error"]
    unknown = ask(env, "revoke", session=alice, serial="7FFFFFFF")
    assert unknown["error"] == "Certificate 7FFFFFFF is not one of yours."
    assert state_of(env) == before
    # Nor listed, nor downloaded.
    assert ask(env, "list", session=alice)["certificates"] == []
    assert ask(env, "download", session=alice, bundle=bobs["bundle"])["status"] == 410
    assert ask(env, "download", session=bob, bundle=bobs["bundle"])["ok"]


@pytest.mark.parametrize("serial", ["zz", "", "1; rm -rf /", "0x" + "F" * 50, None])
def test_forged_serial_is_refused(env, serial):
    session = login(env)
    ask(env, "issue", session=session, device="phone")
    before = state_of(env)
    out = ask(env, "revoke", session=session, serial=serial)
    assert not out["ok"] and out["status"] == 400 and "not a certificate serial" in out["error"]
    assert state_of(env) == before


def test_the_request_cannot_name_another_user(env):
    session = login(env, "alice")
    out = ask(env, "issue", session=session, device="phone", user="bob", email="bob@example.test")
    assert out["ok"]
    rec = env.ca.info()["certificates"][0]
    assert rec["email"] == "alice@example.test"


def test_logs_carry_no_secret(env, caplog):
    caplog.set_level(logging.INFO, logger="hm_cert_helper")
    answer = ask(env, "login", user="alice", password=PASSWORDS["alice"])
    code = env.mailer.codes[-1][1]
    ask(env, "verify", pending=answer["pending"], code="00000000" if code != "00000000" else "11111111")
    session = ask(env, "verify", pending=answer["pending"], code=code)["session"]
    ask(env, "login", user="alice", password="Wrong-Secret-Guess", addr="192.0.2.99")
    out = ask(env, "issue", session=session, device="phone")
    ask(env, "download", session=session, bundle=out["bundle"])
    ask(env, "revoke", session=session, serial=out["serial"])
    text = caplog.text
    for secret in (PASSWORDS["alice"], "Wrong-Secret-Guess", code, out["password"], session,
                   answer["pending"], out["bundle"]):
        assert secret not in text
    for needle in ("login complete user=alice addr=192.0.2.10", "issued user=alice device=phone serial=%s" % out["serial"],
                   "revoked user=alice device=phone serial=%s" % out["serial"], "login failed",
                   "addr=192.0.2.99", "downloaded user=alice"):
        assert needle in text


# ------------------------------------------------------------------ config

def test_config_refuses_a_user_outside_the_served_domains():
    with pytest.raises(config.ConfigError, match="outside the mail domains"):
        settings(users={"eve": {"email": "eve@other.example", "name": "Eve", "notify": "eve@x.example"}})


@pytest.mark.parametrize("raw,message", [
    ({"code_digits": 6}, "at least 8"),
    ({"bundle_lifetime": 0}, "positive integer"),
    ({"users": {"Bad User": {}}}, "not a Linux user name"),
    ({"users": {"dan": {"email": "dan@example.test"}}}, "needs email, name and notify"),
    ({"colour": "red"}, "unknown settings"),
])
def test_config_errors(raw, message):
    with pytest.raises(config.ConfigError, match=message):
        settings(**raw)


def test_served_domain_check_reaches_the_ca(env):
    # A portal user whose address left the served domains (settings edited
    # by hand) gets nothing: _ca.py refuses the identity.
    env.cfg["users"]["alice"]["email"] = "alice@other.example"
    session = login(env)
    out = ask(env, "issue", session=session, device="phone")
    assert not out["ok"] and "outside the mail domains" in out["error"]
    assert env.ca.info()["certificates"] == []
    assert _ca.CAError
