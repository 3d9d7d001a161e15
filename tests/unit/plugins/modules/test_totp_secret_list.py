"""The list form of hardened.mailhost.totp_secret (``users:``): one run for many users.

The module runs for real as a script (module_runner) against throwaway
accounts made with useradd; the rollback after a failed write is driven
through module_utils with one write made to fail.
"""

import json
import os
import pwd
import secrets
import stat
import subprocess

import pyotp
import pytest

import module_runner

from ansible_collections.hardened.mailhost.plugins.module_utils import _fileutil, _totp

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, chown)")


def run_module(tmp_path, check=False, diff=False, **args):
    return module_runner.run_module("totp_secret", tmp_path, check=check, diff=diff, timeout=60, **args)[0]


@pytest.fixture
def users():
    """Three throwaway accounts with homes, removed afterwards."""
    tag = secrets.token_hex(3)
    names = ["hmtest-l%d-%s" % (n, tag) for n in range(3)]
    for name in names:
        subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, timeout=30)
    try:
        yield [pwd.getpwnam(name) for name in names]
    finally:
        for name in names:
            subprocess.run(["userdel", "--remove", name], check=False, timeout=30, capture_output=True)


def secret_file(user):
    return os.path.join(user.pw_dir, ".google_authenticator")


def read(user):
    with open(secret_file(user), encoding="ascii") as handle:
        return handle.read()


def test_one_run_enrols_every_user_and_the_results_hold_no_secret(tmp_path, users):
    names = [u.pw_name for u in users]
    result = run_module(tmp_path, diff=True, users=names, scratch_codes=2, issuer="mail.example.org")
    assert result["changed"] is True
    assert [u["name"] for u in result["users"]] == names
    assert all(u["changed"] and u["created"] and not u["rotated"] and u["reasons"] == ["new secret"]
               for u in result["users"])
    assert sorted(result["secrets"]) == sorted(names)
    for user in users:
        made = result["secrets"][user.pw_name]
        lines = read(user).split("\n")
        assert lines[0] == made["secret"] and lines[5:7] == made["scratch_codes"]
        info = os.stat(secret_file(user))
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (user.pw_uid, user.pw_gid, 0o400)
        parsed = pyotp.parse_uri(made["uri"])
        assert parsed.issuer == "mail.example.org" and parsed.name.startswith(user.pw_name + "@")
        assert pyotp.TOTP(made["secret"]).now() == parsed.now()
    # Only "secrets" holds secret material: the per-user list, the diff and the
    # invocation can be looped over and shown.
    shown = json.dumps({k: v for k, v in result.items() if k != "secrets"})
    for made in result["secrets"].values():
        assert made["secret"] not in shown and made["secret"].lower() not in shown
        assert all(code not in shown for code in made["scratch_codes"])
    assert "otpauth" not in shown
    assert result["diff"]["after"].count("<secret>\n") == 3

    again = run_module(tmp_path, diff=True, users=names, scratch_codes=2, issuer="mail.example.org")
    assert again["changed"] is False and again["secrets"] == {}
    assert not any(u["changed"] for u in again["users"])
    assert again["diff"] == {"before": "", "after": "", "before_header": again["diff"]["before_header"],
                             "after_header": again["diff"]["after_header"]}
    assert [read(u).split("\n")[0] for u in users] == [result["secrets"][n]["secret"] for n in names]


def test_check_mode_reports_per_user_and_writes_and_returns_nothing(tmp_path, users):
    names = [u.pw_name for u in users]
    first = run_module(tmp_path, users=names[:1])
    kept = read(users[0])
    planned = run_module(tmp_path, check=True, diff=True, users=names, window_size=5)
    assert planned["changed"] is True and planned["secrets"] == {}
    by_name = {u["name"]: u for u in planned["users"]}
    assert by_name[names[0]]["created"] is False and by_name[names[0]]["reasons"] == ["window size"]
    assert by_name[names[1]]["created"] is True and by_name[names[2]]["created"] is True
    assert read(users[0]) == kept
    assert not os.path.exists(secret_file(users[1])) and not os.path.exists(secret_file(users[2]))
    assert '" WINDOW_SIZE 3' in planned["diff"]["before"] and '" WINDOW_SIZE 5' in planned["diff"]["after"]
    assert first["secrets"][names[0]]["secret"] not in json.dumps(planned)


def test_one_unknown_user_fails_naming_it_and_changes_nothing(tmp_path, users):
    names = [u.pw_name for u in users]
    result = run_module(tmp_path, users=[names[0], "nosuchuser-hm", names[1]])
    assert result["failed"] and "nosuchuser-hm does not exist" in result["msg"]
    assert "nothing was changed for any user" in result["msg"]
    assert not any(os.path.exists(secret_file(u)) for u in users)
    twice = run_module(tmp_path, users=[names[0], names[0]])
    assert twice["failed"] and "%s is listed twice" % names[0] in twice["msg"]
    assert not os.path.exists(secret_file(users[0]))


def test_one_unusable_file_fails_naming_its_user_and_changes_nothing(tmp_path, users):
    names = [u.pw_name for u in users]
    bad = secret_file(users[1])
    with open(bad, "w", encoding="ascii") as handle:
        handle.write("not a secret\n")
    os.chown(bad, users[1].pw_uid, users[1].pw_gid)
    result = run_module(tmp_path, users=names)
    assert result["failed"] and names[1] in result["msg"] and "not a valid TOTP file" in result["msg"]
    assert "not a secret" not in result["msg"]
    assert not os.path.exists(secret_file(users[0])) and not os.path.exists(secret_file(users[2]))
    with open(bad, encoding="ascii") as handle:
        assert handle.read() == "not a secret\n"


def test_rotate_and_absent_for_the_list(tmp_path, users):
    names = [u.pw_name for u in users]
    made = run_module(tmp_path, users=names)
    rotated = run_module(tmp_path, users=names[:2], rotate=True)
    assert [u["rotated"] for u in rotated["users"]] == [True, True]
    assert all(rotated["secrets"][n]["secret"] != made["secrets"][n]["secret"] for n in names[:2])
    assert read(users[2]).split("\n")[0] == made["secrets"][names[2]]["secret"]
    removed = run_module(tmp_path, diff=True, users=names, state="absent")
    assert removed["changed"] and all(u["changed"] and u["state"] == "absent" for u in removed["users"])
    assert removed["secrets"] == {} and removed["diff"]["after"].count("# ") == 3
    assert not any(os.path.exists(secret_file(u)) for u in users)
    assert run_module(tmp_path, users=names, state="absent")["changed"] is False


def test_an_empty_list_changes_nothing(tmp_path):
    result = run_module(tmp_path, users=[])
    assert result["changed"] is False and result["users"] == [] and result["secrets"] == {}


@pytest.mark.parametrize("args,message", [
    ({"users": ["root"], "user": "root"}, "mutually exclusive: user|users"),
    ({"users": ["root"], "path": "/tmp/x"}, "mutually exclusive: users|path"),
    ({"users": ["root"], "label": "x"}, "mutually exclusive: users|label"),
    ({}, "one of the following is required: user, users"),
])
def test_list_and_single_forms_are_exclusive(tmp_path, args, message):
    result = run_module(tmp_path, **args)
    assert result["failed"] and message in result["msg"]


def test_a_failed_write_puts_back_every_file_already_written(users, monkeypatch):
    """No new secret may stay in force when the run fails: the caller never got it."""
    names = [u.pw_name for u in users]
    old = _totp.ensure(names[0])  # rotated in the run below, must come back
    old_text = read(users[0])
    real_write = _fileutil.atomic_write

    def write_fails_for_the_last_user(path, *args, **kwargs):
        if path == secret_file(users[2]):
            raise OSError(28, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(_fileutil, "atomic_write", write_fails_for_the_last_user)
    with pytest.raises(_totp.TotpError) as failure:
        _totp.ensure_many(names, rotate=True)
    message = str(failure.value)
    assert names[2] in message and "No space left" in message and "put back" in message
    assert old["secret"] not in message
    assert read(users[0]) == old_text
    assert stat.S_IMODE(os.stat(secret_file(users[0])).st_mode) == 0o400
    assert not os.path.exists(secret_file(users[1]))
    assert not os.path.exists(secret_file(users[2]))
