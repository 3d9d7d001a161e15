"""Module tests for hardened.mailhost.totp_secret.

The module runs for real, as a script with an ``ANSIBLE_MODULE_ARGS`` file
(how Ansible hands it its arguments), against a throwaway user ``hmtest-*``
made with useradd. Where the host has pam_google_authenticator and pamtester
(scripts/setup.sh installs them), the written file is also used for real
logins through PAM.
"""

import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import time

import pyotp
import pytest

import module_runner

PAM_MODULE_DIRS = ("/lib/x86_64-linux-gnu/security", "/usr/lib/x86_64-linux-gnu/security",
                   "/lib/aarch64-linux-gnu/security", "/usr/lib/aarch64-linux-gnu/security",
                   "/lib/security", "/usr/lib/security")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, chown)")


def run_module(tmp_path, check=False, diff=False, **args):
    return module_runner.run_module("totp_secret", tmp_path, check=check, diff=diff, timeout=60, **args)[0]


@pytest.fixture
def user():
    """A throwaway account with a home, removed afterwards."""
    name = "hmtest-totp-%s" % secrets.token_hex(3)
    subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, timeout=30)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, timeout=30,
                       capture_output=True)


@needs_root
def test_enrols_user_in_home_with_owner_mode_and_pyotp_code(tmp_path, user):
    result = run_module(tmp_path, user=user.pw_name, scratch_codes=5, issuer="mail.example.org")
    path = os.path.join(user.pw_dir, ".google_authenticator")
    assert result["changed"] and result["created"] and result["path"] == path
    info = os.stat(path)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        user.pw_uid, user.pw_gid, 0o400)
    with open(path) as handle:
        lines = handle.read().split("\n")
    assert lines[:5] == [result["secret"], '" RATE_LIMIT 2 30', '" WINDOW_SIZE 3',
                         '" DISALLOW_REUSE', '" TOTP_AUTH']
    assert lines[5:] == result["scratch_codes"] + [""]
    parsed = pyotp.parse_uri(result["uri"])
    assert parsed.issuer == "mail.example.org"
    assert parsed.name.startswith(user.pw_name + "@")
    assert pyotp.TOTP(lines[0]).now() == parsed.now()
    # No stray temporary file in the home.
    assert [n for n in os.listdir(user.pw_dir) if "google" in n] == [".google_authenticator"]

    again = run_module(tmp_path, user=user.pw_name, scratch_codes=5, issuer="mail.example.org")
    assert again["changed"] is False
    assert "secret" not in again and "uri" not in again and "scratch_codes" not in again


@needs_root
def test_check_mode_and_diff(tmp_path, user):
    path = os.path.join(user.pw_dir, ".google_authenticator")
    result = run_module(tmp_path, check=True, diff=True, user=user.pw_name, scratch_codes=2)
    assert result["changed"] and result["created"] and "secret" not in result
    assert not os.path.exists(path)
    assert result["diff"]["after"].startswith("<secret>\n")

    created = run_module(tmp_path, diff=True, user=user.pw_name, scratch_codes=2)
    with open(path, "rb") as handle:
        before = handle.read()
    changed = run_module(tmp_path, diff=True, user=user.pw_name, scratch_codes=2, window_size=5)
    assert changed["changed"] and not changed["created"]
    assert '" WINDOW_SIZE 5' in changed["diff"]["after"]
    for diff in (created["diff"], changed["diff"]):
        blob = json.dumps(diff)
        assert created["secret"] not in blob
        assert all(code not in blob for code in created["scratch_codes"])
    with open(path, "rb") as handle:
        after = handle.read()
    assert after.split(b"\n")[0] == before.split(b"\n")[0]

    checked = run_module(tmp_path, check=True, user=user.pw_name, rotate=True)
    assert checked["changed"] and checked["rotated"] and "secret" not in checked
    with open(path, "rb") as handle:
        assert handle.read() == after


@needs_root
def test_absent(tmp_path, user):
    path = os.path.join(user.pw_dir, ".google_authenticator")
    run_module(tmp_path, user=user.pw_name)
    assert run_module(tmp_path, user=user.pw_name, state="absent", check=True)["changed"]
    assert os.path.exists(path)
    assert run_module(tmp_path, user=user.pw_name, state="absent")["changed"]
    assert not os.path.exists(path)
    assert run_module(tmp_path, user=user.pw_name, state="absent")["changed"] is False


@needs_root
def test_malformed_file_fails_and_is_left_alone(tmp_path, user):
    path = os.path.join(user.pw_dir, ".google_authenticator")
    with open(path, "w") as handle:
        handle.write('JBSWY3DPEHPK3PXP\n" HOTP_COUNTER 1\n')
    os.chown(path, user.pw_uid, user.pw_gid)
    result = run_module(tmp_path, user=user.pw_name)
    assert result["failed"]
    assert "counter-based (HOTP)" in result["msg"] and "nothing was changed" in result["msg"]
    with open(path) as handle:
        assert handle.read() == 'JBSWY3DPEHPK3PXP\n" HOTP_COUNTER 1\n'
    os.chown(path, 0, 0)
    assert "owned by uid 0" in run_module(tmp_path, user=user.pw_name)["msg"]
    rotated = run_module(tmp_path, user=user.pw_name, rotate=True)
    assert rotated["rotated"] and os.stat(path).st_uid == user.pw_uid


@pytest.mark.parametrize("args,message", [
    (dict(user="nobody"), "home directory /nonexistent of user nobody does not exist"),
    (dict(user="hmtest-no-such-user"), "user hmtest-no-such-user does not exist"),
    (dict(user="Bad User"), "invalid user name 'Bad User'"),
    (dict(user="root", window_size=40), "window_size must be between 1 and 21, got 40"),
    (dict(user="root", rate_limit_logins=11), "rate_limit_logins must be between 0 and 10"),
    (dict(user="root", rate_limit_seconds=5), "rate_limit_seconds must be between 15 and 600"),
    (dict(user="root", scratch_codes=20), "scratch_codes must be between 0 and 10"),
    (dict(user="root", issuer="a:b"), "issuer must not contain ':'"),
    (dict(user="root", state="gone"), "value of state must be one of: present, absent"),
    (dict(user="root", window_size="three"), "window_size"),
])
def test_bad_input_fails_with_a_clear_message(tmp_path, args, message):
    target = tmp_path / "ga"
    if args["user"] != "nobody":  # with a path the home does not matter
        args.setdefault("path", str(target))
    result = run_module(tmp_path, **args)
    assert result["failed"] and message in result["msg"], result["msg"]
    assert not target.exists()


# --- real logins through pam_google_authenticator -------------------------

def pam_module_present():
    return any(os.path.exists(os.path.join(d, "pam_google_authenticator.so"))
               for d in PAM_MODULE_DIRS)


needs_pam = pytest.mark.skipif(
    os.geteuid() != 0 or not pam_module_present() or not shutil.which("pamtester"),
    reason="needs root, libpam-google-authenticator and pamtester (scripts/setup.sh)")


@pytest.fixture
def pam_service():
    name = "hmtest-totp-%s" % secrets.token_hex(3)
    path = os.path.join("/etc/pam.d", name)
    with open(path, "w") as handle:
        handle.write("auth required pam_google_authenticator.so\n"
                     "account required pam_permit.so\n")
    try:
        yield name
    finally:
        os.unlink(path)


def pam_login(service, user_name, code):
    proc = subprocess.run(["pamtester", service, user_name, "authenticate"],
                          input=code + "\n", capture_output=True, text=True, timeout=30,
                          check=False)
    return proc.returncode == 0


def wait_for_fresh_step(margin=3):
    """Stay away from a 30 s boundary so 'now' and the PAM module agree."""
    left = 30 - time.time() % 30
    if left < margin:
        time.sleep(left + 0.5)


@needs_pam
def test_real_pam_logins_and_idempotence_after_pam_rewrites(tmp_path, user, pam_service):
    args = dict(user=user.pw_name, scratch_codes=3, rate_limit_logins=10,
                rate_limit_seconds=30)
    created = run_module(tmp_path, **args)
    path = created["path"]
    totp = pyotp.TOTP(created["secret"])
    wrong = "%06d" % ((int(totp.now()) + 1) % 1000000)

    assert not pam_login(pam_service, user.pw_name, wrong)
    wait_for_fresh_step()
    code = totp.now()
    assert pam_login(pam_service, user.pw_name, code)
    assert not pam_login(pam_service, user.pw_name, code), "DISALLOW_REUSE not honoured"
    scratch = created["scratch_codes"][0]
    assert pam_login(pam_service, user.pw_name, scratch)
    assert not pam_login(pam_service, user.pw_name, scratch), "scratch code used twice"

    with open(path) as handle:
        text = handle.read()
    # The PAM module wrote its runtime state into our file...
    assert '" DISALLOW_REUSE ' in text and scratch not in text
    rate_line = [line for line in text.split("\n") if line.startswith('" RATE_LIMIT')][0]
    assert len(rate_line.split()) > 4
    # ... which is not a difference for the module.
    before = os.stat(path)
    again = run_module(tmp_path, **args)
    assert again["changed"] is False
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)

    # An option change keeps the secret and the used steps: the code stays spent.
    changed = run_module(tmp_path, **dict(args, window_size=5))
    assert changed["changed"] and not changed["created"]
    assert not pam_login(pam_service, user.pw_name, code), "option change revived a used code"
    assert pam_login(pam_service, user.pw_name, created["scratch_codes"][1])


@needs_pam
def test_real_pam_rate_limit_default(tmp_path, user, pam_service):
    created = run_module(tmp_path, user=user.pw_name, disallow_reuse=False)
    totp = pyotp.TOTP(created["secret"])
    wait_for_fresh_step(margin=5)
    assert pam_login(pam_service, user.pw_name, totp.now())
    assert pam_login(pam_service, user.pw_name, totp.now())
    # Third attempt within 30 s: refused even with the right code.
    assert not pam_login(pam_service, user.pw_name, totp.now())
