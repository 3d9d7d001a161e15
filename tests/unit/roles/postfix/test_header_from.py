"""The header From: milter's decision logic, maps and pymilter glue."""

import os
import sys
import types

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.abspath(os.path.join(HERE, "..", "..", "..", "..", "roles", "postfix", "files"))
# The package is copied to hosts file by file: keep __pycache__ out of the role.
sys.dont_write_bytecode = True
if FILES not in sys.path:
    sys.path.insert(0, FILES)

from hm_header_from import decision, tables  # noqa: E402

FP_A = ":".join(["AB"] * 32)
FP_B = ":".join(["0C"] * 32)
CLIENTCERTS = "# CA export\n%s alice@example.test\n%s carol@partner.example\n" % (FP_A, FP_B)
# What roles/postfix/templates/sender_login.regexp.j2 writes for two domains.
SENDER_LOGIN = (
    "# comment\n"
    "/^([^@+]+)(\\+[^@]*)?@example\\.test$/ ${1}, ${1}@example.test, ${1}@example.org\n"
    "/^([^@+]+)(\\+[^@]*)?@example\\.org$/ ${1}, ${1}@example.test, ${1}@example.org\n"
)
DOMAINS = ["example.test", "Example.ORG"]


@pytest.fixture()
def maps(tmp_path):
    certs = tmp_path / "relay_clientcerts"
    certs.write_text(CLIENTCERTS)
    logins = tmp_path / "sender_login.regexp"
    logins.write_text(SENDER_LOGIN)
    return tables.Tables(str(certs), str(logins), DOMAINS), certs, logins


# ------------------------------------------------------------ From: parsing

@pytest.mark.parametrize("value, expected", [
    ("bob@example.test", [("", "bob@example.test")]),
    ("<bob@example.test>", [("", "bob@example.test")]),
    ("Bob Builder <bob@example.test>", [("Bob Builder", "bob@example.test")]),
    ('"Builder, Bob" <bob@example.test>', [("Builder, Bob", "bob@example.test")]),
    ("=?utf-8?q?B=C3=B6b?= <bob@example.test>", [("B\u00f6b", "bob@example.test")]),
    ("bob@example.test, Alice <alice@example.test>", [("", "bob@example.test"), ("Alice", "alice@example.test")]),
    ("Bob\r\n <bob@example.test>", [("Bob", "bob@example.test")]),
])
def test_from_addresses_reads_what_mail_programs_write(value, expected):
    assert decision.from_addresses([value]) == expected


@pytest.mark.parametrize("values, message", [
    ([], "no From"),
    (["bob@example.test", "bob@example.test"], "2 From"),
    ([""], "From"),
    (["undisclosed-senders:;"], "group"),
    (["Friends: bob@example.test;"], "group"),
    (["bob"], "From"),
    (["<bob@>"], "From"),
    (["bob@example.test <ceo@example.test"], "From"),
    (["bob\x00@example.test"], "NUL"),
])
def test_from_addresses_refuses_what_cannot_be_read_with_certainty(values, message):
    with pytest.raises(decision.FromHeaderError, match=message):
        decision.from_addresses(values)


# ------------------------------------------------------------ maps

def test_clientcerts_export_gives_the_listed_addresses():
    assert tables.parse_clientcerts(CLIENTCERTS) == {"alice@example.test", "carol@partner.example"}


@pytest.mark.parametrize("line", ["AB:CD a@example.test", FP_A, FP_A + " no-address", FP_A + " a@b c"])
def test_damaged_clientcerts_export_is_an_error(line):
    with pytest.raises(ValueError, match="line 2"):
        tables.parse_clientcerts(CLIENTCERTS.splitlines()[1] + "\n" + line + "\n")


@pytest.mark.parametrize("address, owners", [
    ("bob@example.test", ["bob", "bob@example.test", "bob@example.org"]),
    ("BOB+news@Example.Test", ["bob", "bob@example.test", "bob@example.org"]),
    ("bob@example.org", ["bob", "bob@example.test", "bob@example.org"]),
    ("bob@example.net", []),
    ("bob@sub.example.test", []),
])
def test_sender_login_map_is_read_as_postfix_reads_it(address, owners):
    assert tables.lookup_owners(tables.parse_regexp_map(SENDER_LOGIN), address) == owners


@pytest.mark.parametrize("line", [
    "if /x/", "/unterminated x", "/(/ x", "!/x/ y", "/x/m y", "/x/",
])
def test_sender_login_map_refuses_rules_it_does_not_understand(line):
    with pytest.raises(ValueError, match="line 1"):
        tables.parse_regexp_map(line + "\n")


def test_case_sensitive_flag_is_honoured():
    rules = tables.parse_regexp_map("/^bob@x\\.test$/I bob\n")
    assert tables.lookup_owners(rules, "bob@x.test") == ["bob"]
    assert tables.lookup_owners(rules, "BOB@x.test") == []


def test_tables_read_changed_maps_again(maps):
    table, certs, _logins = maps
    assert table.cert_is_listed("Alice@Example.test")
    certs.write_text("%s dave@example.test\n" % FP_A)
    os.utime(str(certs), ns=(1, 1))
    assert not table.cert_is_listed("alice@example.test")
    assert table.cert_is_listed("dave@example.test")


@pytest.mark.parametrize("login, address, owns", [
    ("bob", "bob@example.test", True),
    ("bob+phone", "bob@example.test", True),           # a device login owns what its user owns
    ("Bob+Phone", "bob+list@example.org", True),
    ("bob+phone@example.org", "bob@example.test", True),
    ("bob+phone", "alice@example.test", False),
    ("bobby+phone", "bob@example.test", False),
    ("bob+phone@other.test", "bob@example.test", False),
    ("bob+phone", "bob@elsewhere.test", False),
])
def test_sasl_owns_for_device_logins(maps, login, address, owns):
    assert maps[0].sasl_owns(login, address) is owns


def test_tables_need_a_domain(tmp_path):
    with pytest.raises(ValueError, match="domain"):
        tables.Tables("", "", [])


# ------------------------------------------------------------ decisions

CERT = "alice@example.test"


def verdict(maps, from_values, cert=None, login=None):
    return decision.decide(from_values, cert, login, maps[0])


@pytest.mark.parametrize("from_value, cert, login", [
    ("alice@example.test", CERT, None),
    ("Alice <ALICE@EXAMPLE.TEST>", CERT, None),
    ("=?utf-8?q?Alice_=28laptop=29?= <alice@example.test>", CERT, None),
    ("bob@example.test", None, "bob"),
    ("Bob <bob+lists@example.test>", None, "bob"),
    ("bob@example.org", None, "bob"),                # own address in another shared domain
    ("bob@example.test", None, "bob@example.test"),  # full-address login
    ('"bob@example.test" <bob@example.test>', None, "bob"),
    ("bob@example.test, bob@example.org", None, "bob"),
])
def test_own_header_from_is_accepted(maps, from_value, cert, login):
    assert verdict(maps, [from_value], cert, login) == decision.ACCEPT


@pytest.mark.parametrize("from_values, cert, login, text", [
    (["ceo@example.test"], CERT, None, "not owned by this client certificate"),
    (["ceo@example.test"], None, "bob", "not owned by user bob"),
    (["Alice <alice@example.test>"], None, "bob", "not owned by user bob"),
    (["bob@example.test, ceo@example.test"], None, "bob", "<ceo@example.test>"),
    (["bob@example.test"], None, "bob", None),  # control: accepted
    (["bob@example.net"], None, "bob", "not in a domain of this host"),
    # A relay-only certificate (another domain) sends as itself, and only as itself.
    (["carol@partner.example"], "carol@partner.example", None, None),
    (["ceo@partner.example"], "carol@partner.example", None, "not owned by this client certificate"),
    (["carol@partner.example"], None, "bob", "not in a domain of this host"),
    (["bob@example.test", "bob@example.test"], None, "bob", "2 From"),
    ([], None, "bob", "no From"),
    (["undisclosed-recipients:;"], None, "bob", "group"),
    (['"ceo@example.test" <bob@example.test>'], None, "bob", "Display name"),
    (["=?utf-8?q?ceo=40example=2Etest?= <bob@example.test>"], None, "bob", "Display name"),
    (["=?utf-8?b?Y2VvQGV4YW1wbGUudGVzdA==?= <bob@example.test>"], None, "bob", "Display name"),
    # Certificate and app password together: both must own the address.
    (["alice@example.test"], CERT, "bob", "not owned by user bob"),
    (["bob@example.test"], CERT, "bob", "not owned by this client certificate"),
])
def test_foreign_or_unreadable_header_from_is_rejected(maps, from_values, cert, login, text):
    result = verdict(maps, from_values, cert, login)
    if text is None:
        assert result == decision.ACCEPT
        return
    assert result.action == "reject" and result.code == "550" and result.enhanced == "5.7.1", result
    assert text in result.text, result


def test_a_certificate_no_longer_in_the_map_is_no_identity(maps):
    # Revoked or expired: the CA left it out of the export, as for relaying.
    result = verdict(maps, ["dave@example.test"], "dave@example.test", None)
    assert result.action == "reject" and "No authenticated identity" in result.text
    # With an app password as well, only the login counts (as for MAIL FROM).
    assert verdict(maps, ["bob@example.test"], "dave@example.test", "bob") == decision.ACCEPT


def test_no_identity_is_rejected(maps):
    result = verdict(maps, ["bob@example.test"])
    assert result.action == "reject" and "No authenticated identity" in result.text


@pytest.mark.parametrize("broken", ["certs-missing", "logins-missing", "logins-damaged"])
def test_unreadable_maps_fail_closed_with_a_temporary_error(maps, broken):
    table, certs, logins = maps
    if broken == "certs-missing":
        certs.unlink()
        cert, login = CERT, None
    elif broken == "logins-missing":
        logins.unlink()
        cert, login = None, "bob"
    else:
        logins.write_text("/broken( x\n")
        cert, login = None, "bob"
    result = decision.decide(["bob@example.test"], cert, login, table)
    assert result.action == "tempfail" and result.code == "451" and result.enhanced.startswith("4."), result


# ------------------------------------------------------------ pymilter glue

class FakeMilterModule(types.ModuleType):
    """Just enough of pymilter's Milter package for the glue."""

    CONTINUE, REJECT, TEMPFAIL = "continue", "reject", "tempfail"

    class Base(object):
        def _setctx(self, macros):
            self.macros = macros
            self.replies = []

        def getsymval(self, name):
            return self.macros.get(name)

        def setreply(self, code, xcode, text):
            self.replies.append((code, xcode, text))


@pytest.fixture()
def glue(monkeypatch):
    monkeypatch.setitem(sys.modules, "Milter", FakeMilterModule("Milter"))
    sys.modules.pop("hm_header_from.milter", None)
    from hm_header_from import milter
    yield milter
    sys.modules.pop("hm_header_from.milter", None)


def session(glue, table, macros, headers, logged=None):
    cls = glue.make_milter_class(table, log=(logged.append if logged is not None else lambda _m: None))
    instance = cls()
    instance._setctx(macros)
    assert instance.envfrom("<x@example.test>") == "continue"
    for name, value in headers:
        assert instance.header(name, value) == "continue"
    return instance, instance.eoh()


def test_glue_rejects_a_foreign_from_with_the_verdict_text(glue, maps):
    logged = []
    instance, result = session(glue, maps[0], {"{auth_authen}": "bob", "i": "4XyZ"},
                               [("Subject", "hi"), ("FROM", b"CEO <ceo@example.test>")], logged)
    assert result == "reject"
    assert instance.replies == [("550", "5.7.1", "<ceo@example.test>: header From address not owned by user bob")]
    assert logged and logged[0].startswith("4XyZ: reject:")


def test_glue_accepts_the_certificate_owner(glue, maps):
    instance, result = session(glue, maps[0], {"{cert_subject}": CERT}, [("From", "alice@example.test")])
    assert result == "continue" and instance.replies == []


def test_glue_tempfails_without_maps(glue, maps):
    maps[2].unlink()
    instance, result = session(glue, maps[0], {"{auth_authen}": "bob"}, [("From", "bob@example.test")])
    assert result == "tempfail" and instance.replies[0][0] == "451"


def test_glue_doubles_percent_signs_for_libmilter(glue, maps):
    instance, result = session(glue, maps[0], {"{auth_authen}": "bob"}, [("From", "100%@example.net")])
    assert result == "reject" and "%%" in instance.replies[0][2]


def test_command_line_needs_a_socket_and_a_domain():
    from hm_header_from import __main__ as cli
    with pytest.raises(SystemExit):
        cli.parse_args(["--domain", "example.test"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--socket", "unix:/x"])
    args = cli.parse_args(["--socket", "unix:/x", "--domain", "a.test", "--domain", "b.test",
                           "--clientcerts", "/c", "--sender-login-map", "/s"])
    assert args.domain == ["a.test", "b.test"] and args.clientcerts == "/c" and args.sender_login_map == "/s"
