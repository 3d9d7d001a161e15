"""The Postfix policy service that binds a client certificate to its address."""

import importlib.util
import io
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "..", "..", "roles", "postfix", "files", "ccert_sender_policy.py")

spec = importlib.util.spec_from_file_location("ccert_sender_policy", SCRIPT)
policy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(policy)

FP_A = ":".join(["AB"] * 32)
FP_B = ":".join(["0C"] * 32)
MAP = "%s alice@example.test\n%s bob@example.test\n" % (FP_A, FP_B)


def request(**attrs):
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT"}
    base.update(attrs)
    return "".join("%s=%s\n" % item for item in base.items()) + "\n"


def test_parse_map_reads_fingerprints_and_addresses():
    assert policy.parse_map("# comment\n\n" + MAP) == {FP_A: "alice@example.test", FP_B: "bob@example.test"}


def test_parse_map_folds_fingerprint_case():
    assert policy.parse_map(FP_A.lower() + " a@example.test\n") == {FP_A: "a@example.test"}


@pytest.mark.parametrize("line", [
    "AB:CD alice@example.test",             # short fingerprint
    FP_A + " not-an-address",
    FP_A,
    FP_A + " a@example.test extra",
    FP_A.replace(":", "") + " a@example.test",
])
def test_parse_map_rejects_damaged_lines(line):
    with pytest.raises(ValueError, match="line 2"):
        policy.parse_map(MAP.splitlines()[0] + "\n" + line + "\n")


CERTS = policy.parse_map(MAP)


def test_listed_certificate_with_own_address_is_left_to_the_next_restriction():
    attrs = {"ccert_fingerprint": FP_A, "ccert_subject": "alice@example.test", "sender": "Alice@Example.test"}
    assert policy.decide(attrs, CERTS) == "DUNNO"


def test_listed_certificate_with_another_address_is_rejected():
    attrs = {"ccert_fingerprint": FP_A, "ccert_subject": "alice@example.test", "sender": "bob@example.test"}
    assert policy.decide(attrs, CERTS).startswith("REJECT 5.7.1 <bob@example.test>")


def test_listed_certificate_with_null_sender_is_rejected():
    attrs = {"ccert_fingerprint": FP_A, "ccert_subject": "alice@example.test", "sender": ""}
    assert policy.decide(attrs, CERTS).startswith("REJECT")


def test_listed_but_untrusted_certificate_is_rejected():
    # Postfix leaves ccert_subject empty when the chain did not verify (e.g. expired).
    attrs = {"ccert_fingerprint": FP_A, "ccert_subject": "", "sender": "alice@example.test"}
    assert "not valid" in policy.decide(attrs, CERTS)


@pytest.mark.parametrize("attrs", [
    {},
    {"ccert_fingerprint": ""},
    {"ccert_fingerprint": ":".join(["EE"] * 32), "ccert_subject": "x@example.test", "sender": "y@example.test"},
    {"sasl_username": "alice", "sender": "bob@example.test"},
])
def test_clients_without_a_listed_certificate_are_not_decided_here(attrs):
    assert policy.decide(attrs, CERTS) == "DUNNO"


def write_map(tmp_path, text):
    path = tmp_path / "relay_clientcerts"
    path.write_text(text)
    return policy.MapFile(str(path)), path


def test_serve_answers_every_request_of_a_session(tmp_path):
    mapfile, _path = write_map(tmp_path, MAP)
    stdin = io.StringIO(
        request(ccert_fingerprint=FP_A, ccert_subject="alice@example.test", sender="alice@example.test")
        + request(ccert_fingerprint=FP_A, ccert_subject="alice@example.test", sender="eve@example.test"))
    stdout = io.StringIO()
    assert policy.serve(stdin, stdout, mapfile) == 2
    answers = stdout.getvalue().split("\n\n")
    assert answers[0] == "action=DUNNO"
    assert answers[1].startswith("action=REJECT 5.7.1 <eve@example.test>")


def test_serve_rereads_a_changed_map(tmp_path):
    mapfile, path = write_map(tmp_path, MAP)
    attrs = dict(ccert_fingerprint=FP_A, ccert_subject="alice@example.test", sender="alice@example.test")
    assert policy.decide(attrs, mapfile.certs()) == "DUNNO"
    path.write_text(MAP.replace("alice@", "carol@") + "# longer\n")
    assert policy.decide(attrs, mapfile.certs()).startswith("REJECT")


@pytest.mark.parametrize("text", [None, "garbage line\n"])
def test_serve_defers_when_the_map_is_missing_or_damaged(tmp_path, text):
    path = tmp_path / "relay_clientcerts"
    if text is not None:
        path.write_text(text)
    logged = []
    stdout = io.StringIO()
    policy.serve(io.StringIO(request(ccert_fingerprint=FP_A)), stdout, policy.MapFile(str(path)), logged.append)
    assert stdout.getvalue() == "action=DEFER 4.3.5 Client certificate map unavailable\n\n"
    assert logged and str(path) in logged[0]


def test_main_needs_the_map_argument(capsys):
    assert policy.main(["policy"]) == 2
    assert "usage" in capsys.readouterr().err


# ------------------------------------------------- the identity line (issue 14)

def eod(**attrs):
    base = {"protocol_state": "END-OF-MESSAGE", "queue_id": "4F2A1B", "client_address": "10.0.0.9"}
    base.update(attrs)
    return base


def test_identity_of_a_listed_certificate_names_fingerprint_and_address():
    attrs = eod(ccert_fingerprint=FP_A.lower(), ccert_subject="alice@example.test", sasl_username="alice+phone")
    assert policy.identity(attrs, CERTS) == (
        "4F2A1B: identity=cert:%s address=alice@example.test client=10.0.0.9" % FP_A)


def test_identity_of_an_app_password_is_the_login():
    assert policy.identity(eod(sasl_username="bob+phone"), CERTS) == \
        "4F2A1B: identity=login:bob+phone client=10.0.0.9"


def test_identity_of_an_unlisted_or_untrusted_certificate_falls_back_to_the_login():
    unlisted = eod(ccert_fingerprint=":".join(["11"] * 32), ccert_subject="x@example.test", sasl_username="bob+pc")
    untrusted = eod(ccert_fingerprint=FP_A, sasl_username="bob+pc")
    assert "identity=login:bob+pc " in policy.identity(unlisted, CERTS)
    assert "identity=login:bob+pc " in policy.identity(untrusted, CERTS)
    assert "identity=none" in policy.identity(eod(), CERTS)


def test_identity_is_logged_only_at_the_end_of_a_message():
    assert policy.identity({"protocol_state": "RCPT", "sasl_username": "bob+pc"}, CERTS) is None


def test_serve_logs_one_identity_line_per_accepted_message(tmp_path):
    path = tmp_path / "map"
    path.write_text(MAP)
    stdin = io.StringIO(
        request(protocol_state="MAIL", ccert_fingerprint=FP_A, ccert_subject="alice@example.test",
                sender="alice@example.test")
        + request(protocol_state="END-OF-MESSAGE", queue_id="ABC123", ccert_fingerprint=FP_A,
                  ccert_subject="alice@example.test", sender="alice@example.test")
        + request(protocol_state="END-OF-MESSAGE", queue_id="DEF456", ccert_fingerprint=FP_A,
                  ccert_subject="alice@example.test", sender="bob@example.test"))
    stdout, lines = io.StringIO(), []
    policy.serve(stdin, stdout, policy.MapFile(str(path)), log_identity=lines.append)
    # The third message is refused (wrong sender): no identity line for it.
    assert lines == ["ABC123: identity=cert:%s address=alice@example.test client=-" % FP_A]


def test_serve_without_a_map_logs_logins():
    stdin = io.StringIO(request(protocol_state="END-OF-MESSAGE", queue_id="Q1", sasl_username="bob+phone",
                                ccert_fingerprint=FP_A, ccert_subject="alice@example.test"))
    stdout, lines = io.StringIO(), []
    policy.serve(stdin, stdout, policy.NoMap(), log_identity=lines.append)
    assert stdout.getvalue() == "action=DUNNO\n\n"
    assert lines == ["Q1: identity=login:bob+phone client=-"]


# ------------------------------------- app-password logins per device (issue 14)

# As the role's sender_login.regexp.j2 writes it for example.test and example.org.
LOGIN_MAP = (
    "# comment\n"
    "/^([^@+]+)(\\+[^@]*)?@example\\.test$/ ${1}, ${1}@example.test, ${1}@example.org\n"
    "/^([^@+]+)(\\+[^@]*)?@example\\.org$/ ${1}, ${1}@example.test, ${1}@example.org\n")


def login_map(tmp_path, text=LOGIN_MAP):
    path = tmp_path / "sender_login.regexp"
    path.write_text(text)
    return policy.LoginMapFile(str(path)), path


@pytest.mark.parametrize("login,sender", [
    ("bob+phone", "bob@example.test"),
    ("bob+phone", "bob+tag@example.org"),
    ("BOB+Phone", "bob@example.test"),
    ("bob", "bob@example.test"),                       # a plain user name, as Dovecot gave it before
    ("bob+phone@example.org", "bob@example.test"),
])
def test_a_device_login_owns_its_users_addresses(tmp_path, login, sender):
    rules = login_map(tmp_path)[0].rules()
    assert policy.decide_login({"sasl_username": login, "sender": sender}, rules) == "DUNNO"


@pytest.mark.parametrize("login,sender", [
    ("bob+phone", "alice@example.test"),
    ("bob+phone", "bob@elsewhere.test"),               # not a domain of the host: no owner
    ("bobby+phone", "bob@example.test"),
    ("bo+b+phone", "bob@example.test"),
    ("bob+phone@other.test", "bob@example.test"),
])
def test_a_device_login_does_not_own_other_addresses(tmp_path, login, sender):
    rules = login_map(tmp_path)[0].rules()
    action = policy.decide_login({"sasl_username": login, "sender": sender}, rules)
    assert action == "553 5.7.1 not owned by user %s" % login


def test_login_check_leaves_unauthenticated_null_sender_and_no_table_alone(tmp_path):
    rules = login_map(tmp_path)[0].rules()
    assert policy.decide_login({"sender": "alice@example.test"}, rules) == "DUNNO"
    assert policy.decide_login({"sasl_username": "bob+phone", "sender": ""}, rules) == "DUNNO"
    assert policy.decide_login({"sasl_username": "bob+phone", "sender": "alice@example.test"}, None) == "DUNNO"


def test_serve_refuses_a_device_login_sending_as_another_user_and_logs_no_identity(tmp_path):
    loginmap, _path = login_map(tmp_path)
    stdin = io.StringIO(
        request(sasl_username="bob+phone", sender="bob@example.test")
        + request(sasl_username="bob+phone", sender="alice@example.test")
        + request(protocol_state="END-OF-MESSAGE", queue_id="Q1", sasl_username="bob+phone",
                  sender="alice@example.test")
        + request(protocol_state="END-OF-MESSAGE", queue_id="Q2", sasl_username="bob+phone",
                  sender="bob@example.test"))
    stdout, lines = io.StringIO(), []
    policy.serve(stdin, stdout, policy.NoMap(), log_identity=lines.append, loginmap=loginmap)
    answers = stdout.getvalue().split("\n\n")
    assert answers[:4] == ["action=DUNNO", "action=553 5.7.1 not owned by user bob+phone",
                           "action=553 5.7.1 not owned by user bob+phone", "action=DUNNO"]
    assert lines == ["Q2: identity=login:bob+phone client=-"]


def test_a_certificate_refusal_comes_before_the_login_check(tmp_path):
    mapfile, _path = write_map(tmp_path, MAP)
    loginmap, _lpath = login_map(tmp_path)
    stdout = io.StringIO()
    policy.serve(io.StringIO(request(ccert_fingerprint=FP_A, ccert_subject="alice@example.test",
                                     sasl_username="alice+pc", sender="eve@example.test")),
                 stdout, mapfile, loginmap=loginmap)
    assert stdout.getvalue().startswith("action=REJECT 5.7.1 <eve@example.test>: Sender address not owned")


@pytest.mark.parametrize("text", [None, "/unterminated bob\n"])
def test_serve_defers_when_the_login_map_is_missing_or_damaged(tmp_path, text):
    path = tmp_path / "sender_login.regexp"
    if text is not None:
        path.write_text(text)
    stdout, logged = io.StringIO(), []
    policy.serve(io.StringIO(request(sasl_username="bob+phone", sender="bob@example.test")), stdout,
                 policy.NoMap(), logged.append, loginmap=policy.LoginMapFile(str(path)))
    assert stdout.getvalue() == "action=DEFER 4.3.5 Sender login map unavailable\n\n"
    assert logged and "sender login map" in logged[0] and str(path) in logged[0]


def test_serve_rereads_a_changed_login_map(tmp_path):
    loginmap, path = login_map(tmp_path)
    attrs = {"sasl_username": "bob+phone", "sender": "bob@example.test"}
    assert policy.decide_login(attrs, loginmap.rules()) == "DUNNO"
    path.write_text(LOGIN_MAP.replace("${1}, ", "nobody, ").replace("example\\.test$", "example\\.net$"))
    assert policy.decide_login(attrs, loginmap.rules()).startswith("553")


def test_main_takes_at_most_two_maps(capsys):
    assert policy.main(["policy", "-", "a", "b"]) == 2
    assert "SENDER_LOGIN_MAP" in capsys.readouterr().err
