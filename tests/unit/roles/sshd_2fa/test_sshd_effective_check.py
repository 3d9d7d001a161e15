"""The sshd_2fa role's read-only check of trusted networks and sshd's effective config."""

import importlib.util
import io
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "..", "..", "roles", "sshd_2fa", "files", "sshd_effective_check.py")

spec = importlib.util.spec_from_file_location("sshd_effective_check", SCRIPT)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

HARDENED = {
    "passwordauthentication": "no", "kbdinteractiveauthentication": "yes", "usepam": "yes",
    "authenticationmethods": "publickey keyboard-interactive", "permitemptypasswords": "no",
    "hostbasedauthentication": "no", "gssapiauthentication": "no", "permitrootlogin": "without-password",
    "disableforwarding": "yes", "allowtcpforwarding": "no", "allowstreamlocalforwarding": "no",
    "x11forwarding": "no", "allowagentforwarding": "no", "permittunnel": "no", "pubkeyauthentication": "yes",
}


def settings(**changes):
    out = dict(HARDENED)
    out.update(changes)
    return out


def keys(found):
    return sorted(key for key, _value, _wanted in found)


@pytest.mark.parametrize("networks,gateways,expected", [
    (["0.0.0.0/0"], [], ["0.0.0.0/0 trusts every address"]),
    (["::/0"], [], ["::/0 trusts every address"]),
    (["10.89.2.0/24"], ["10.89.2.1"], ["10.89.2.0/24 contains the default gateway 10.89.2.1"]),
    (["10.0.0.0/8"], ["10.89.2.1", "fe80::1%eth0"], ["10.0.0.0/8 contains the default gateway 10.89.2.1"]),
    (["2001:db8::/32"], ["2001:db8::1"], ["2001:db8::/32 contains the default gateway 2001:db8::1"]),
    (["10.89.2.5/32", "192.0.2.0/24"], ["10.89.2.1"], []),
    (["not-a-network"], ["10.89.2.1"], []),  # the role's syntax check names it
])
def test_network_problems(networks, gateways, expected):
    problems = check.network_problems(networks, gateways)
    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected):
        assert fragment in problem


def test_probe_address_is_inside_the_network():
    assert check.probe_address("10.89.2.5/32") == "10.89.2.5"
    assert check.probe_address("10.0.0.0/8") == "10.0.0.1"
    assert check.probe_address("2001:db8::/64") == "2001:db8::1"


def test_hardened_settings_pass_in_both_modes():
    request = {"mode": "key_or_totp_password", "connecting_user": "root"}
    assert check.probe_problems(settings(), request, "alice") == []
    assert check.probe_problems(settings(), request, "root") == []
    key_and_totp = {"mode": "key_and_totp", "key_only_users": ["root"], "connecting_user": "root"}
    assert check.probe_problems(settings(authenticationmethods="publickey,keyboard-interactive"),
                                key_and_totp, "alice") == []
    assert check.probe_problems(settings(authenticationmethods="publickey"), key_and_totp, "root") == []


@pytest.mark.parametrize("changes,weak", [
    (dict(authenticationmethods="password"), ["authenticationmethods"]),
    (dict(authenticationmethods="publickey password"), ["authenticationmethods"]),
    (dict(passwordauthentication="yes"), ["passwordauthentication"]),
    (dict(permitemptypasswords="yes"), ["permitemptypasswords"]),
    (dict(hostbasedauthentication="yes"), ["hostbasedauthentication"]),
    (dict(permitrootlogin="yes"), ["permitrootlogin"]),
    (dict(usepam="no"), ["usepam"]),
    (dict(permittunnel="yes"), ["permittunnel"]),
    (dict(disableforwarding="no", allowtcpforwarding="yes"), ["allowtcpforwarding"]),
    (dict(disableforwarding="no", allowstreamlocalforwarding="yes"), ["allowstreamlocalforwarding"]),
    (dict(disableforwarding="no", x11forwarding="yes", allowagentforwarding="yes"),
     ["allowagentforwarding", "x11forwarding"]),
    # DisableForwarding yes overrides the individual keywords: nothing is open.
    (dict(allowtcpforwarding="yes", allowstreamlocalforwarding="yes"), []),
    # Stricter than ours is not a weakening.
    (dict(authenticationmethods="publickey"), []),
    (dict(kbdinteractiveauthentication="no"), []),
])
def test_weakenings_are_found(changes, weak):
    assert keys(check.probe_problems(settings(**changes), {"mode": "key_or_totp_password"}, "alice")) == weak


def test_forwarding_opt_in_allows_exactly_that():
    request = {"mode": "key_or_totp_password", "forwarding": {"tcp": "local"}}
    opted = settings(disableforwarding="no", allowtcpforwarding="local")
    assert check.probe_problems(opted, request, "alice") == []
    assert keys(check.probe_problems(settings(disableforwarding="no", allowtcpforwarding="remote"),
                                     request, "alice")) == ["allowtcpforwarding"]
    assert keys(check.probe_problems(settings(disableforwarding="no", allowtcpforwarding="yes"),
                                     request, "alice")) == ["allowtcpforwarding"]


def test_key_and_totp_needs_both_factors_for_code_users():
    request = {"mode": "key_and_totp", "key_only_users": ["deploy"]}
    for methods in ("publickey", "keyboard-interactive", "publickey keyboard-interactive", "any"):
        assert keys(check.probe_problems(settings(authenticationmethods=methods), request, "alice")) == \
            ["authenticationmethods"], methods
    assert check.probe_problems(settings(authenticationmethods="publickey"), request, "deploy") == []


def test_the_connecting_user_must_keep_a_key_alone():
    request = {"mode": "key_or_totp_password", "connecting_user": "root"}
    found = check.probe_problems(settings(authenticationmethods="publickey,keyboard-interactive"), request, "root")
    assert found and "connecting user" in found[0][2]
    found = check.probe_problems(settings(pubkeyauthentication="no"), request, "root")
    assert found and found[0][0] == "authenticationmethods"


def test_include_lines_are_expanded_with_the_candidate_in_the_live_files_place(tmp_path, monkeypatch):
    folder = tmp_path / "sshd_config.d"
    folder.mkdir()
    (folder / "50-cloud.conf").write_text("PasswordAuthentication yes\n")
    (folder / "60-weak.conf").write_text("Match User alice\n  AuthenticationMethods password\nMatch all\n")
    live = str(folder / "00-hardened.conf")
    main = "Include %s/*.conf\nUsePAM yes\n# Include nothing\n" % folder
    candidate = str(tmp_path / "candidate.conf")
    expanded = check.expand_main_config(main, live, candidate)
    wanted = "Include %s %s %s" % (candidate, folder / "50-cloud.conf", folder / "60-weak.conf")
    assert expanded.splitlines()[0] == wanted
    # With a live file present it is replaced, not read twice.
    (folder / "00-hardened.conf").write_text("Match User bob\n  AuthenticationMethods publickey\n")
    assert str(folder / "00-hardened.conf") not in check.expand_main_config(main, live, candidate)
    files = check.config_files("/etc/ssh/sshd_config", main)
    places = check.match_settings(files, "authenticationmethods")
    assert places == ["%s:2 (Match User bob)" % (folder / "00-hardened.conf"),
                      "%s:2 (Match User alice)" % (folder / "60-weak.conf")]


def test_without_sshd_only_the_networks_are_checked(monkeypatch, capsys):
    request = {"sshd": "/nonexistent/sshd", "trusted_networks": ["0.0.0.0/0"], "gateways": []}
    assert check.main(io.StringIO(json.dumps(request))) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sshd"] is False and len(result["problems"]) == 1


# ------------------------------------------------------------ one probe per class of users

FAKE_SSHD = """#!/usr/bin/env python3
import os, sys
spec = sys.argv[sys.argv.index("-C") + 1]
user = dict(part.split("=", 1) for part in spec.split(","))["user"]
with open(os.environ["FAKE_SSHD_LOG"], "a") as log:
    log.write(user + "\\n")
settings = %r
if user in os.environ.get("FAKE_SSHD_WEAK", "").split(","):
    settings["authenticationmethods"] = "password"
print("\\n".join("%%s %%s" %% item for item in settings.items()))
""" % HARDENED


def probe_run(tmp_path, monkeypatch, main_text, users, weak=(), groups=None):
    sshd = tmp_path / "sshd"
    sshd.write_text(FAKE_SSHD)
    sshd.chmod(0o755)
    log = tmp_path / "probes.log"
    log.write_text("")
    config = tmp_path / "sshd_config"
    config.write_text(main_text)
    monkeypatch.setenv("FAKE_SSHD_LOG", str(log))
    monkeypatch.setenv("FAKE_SSHD_WEAK", ",".join(weak))
    if groups is not None:
        monkeypatch.setattr(check, "user_groups", lambda user: set(groups.get(user, ())))
    result = check.run_probes({"sshd": str(sshd), "main_config": str(config), "users": users,
                               "mode": "key_or_totp_password", "port": 22})
    return result, log.read_text().split()


def test_users_sshd_treats_alike_are_probed_once(tmp_path, monkeypatch):
    users = ["u%03d" % n for n in range(1, 101)]
    result, probed = probe_run(tmp_path, monkeypatch, "UsePAM yes\n", users)
    assert result["problems"] == [] and result["users"] == 101
    # The made-up user and one of the hundred, from each of the two outside addresses.
    assert result["probes"] == 4 and sorted(set(probed)) == [check.MADE_UP_USER, "u001"]


def test_a_match_user_block_gets_its_own_probe_and_names_only_its_users(tmp_path, monkeypatch):
    main = "UsePAM yes\nMatch User carol,e*,!eve\n  AuthenticationMethods password\nMatch all\n"
    users = ["alice", "bob", "carol", "dave", "erin", "eve"]
    result, probed = probe_run(tmp_path, monkeypatch, main, users, weak=["carol", "erin"])
    # Classes: the made-up user, {alice, bob, dave, eve}, {carol, erin}.
    assert result["probes"] == 6 and sorted(set(probed)) == sorted([check.MADE_UP_USER, "alice", "carol"])
    assert len(result["problems"]) == 1
    problem = result["problems"][0]
    assert "'authenticationmethods password'" in problem
    for name in ("carol from 192.0.2.1", "erin from 192.0.2.1", "carol from 2001:db8::1"):
        assert name in problem
    for name in ("alice", "bob", "dave", "eve "):
        assert name not in problem.split(", set in")[0]


def test_a_match_group_block_separates_the_groups_members(tmp_path, monkeypatch):
    main = "Match Group weak,!staff\n  AuthenticationMethods password\n"
    users = ["alice", "bob", "dave"]
    groups = {"alice": ["alice"], "bob": ["bob", "weak", "staff"], "dave": ["dave", "weak"]}
    result, probed = probe_run(tmp_path, monkeypatch, main, users, weak=["dave"], groups=groups)
    # bob is in staff too, so the negation leaves him with alice; dave alone.
    assert result["probes"] == 6 and sorted(set(probed)) == sorted([check.MADE_UP_USER, "alice", "dave"])
    assert len(result["problems"]) == 1 and "dave from" in result["problems"][0]
    assert "bob" not in result["problems"][0]


@pytest.mark.parametrize("match_line", ['Match User "a b"', "Match User a[bc]", "Match !User alice",
                                        "Match Invalid-User"])
def test_match_lines_this_reader_does_not_know_probe_every_user(tmp_path, monkeypatch, match_line):
    users = ["alice", "bob", "carol"]
    result, probed = probe_run(tmp_path, monkeypatch, match_line + "\n  X11Forwarding no\n", users,
                               weak=["bob"])
    assert result["probes"] == 8 and sorted(set(probed)) == sorted([check.MADE_UP_USER] + users)
    assert len(result["problems"]) == 1 and "bob from" in result["problems"][0]
    assert "alice" not in result["problems"][0]


def test_pattern_lists_follow_sshd():
    assert check.pattern_list_matches("alice", "alice")
    assert check.pattern_list_matches("alice", "bob,a*")
    assert not check.pattern_list_matches("alice", "a*,!alice")
    assert not check.pattern_list_matches("alice", "!bob")  # a negation alone never matches
    assert check.pattern_list_matches("u042", "u0??")
    assert not check.pattern_list_matches("Alice", "alice")
