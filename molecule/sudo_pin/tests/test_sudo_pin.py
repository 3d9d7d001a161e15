"""sudo_pin: real sudo, run as normal users inside the containers, answering with PINs.

Each negative case has its own user: pam_faillock counts failures per user.
sudo -S reads one line of stdin per attempt (at most 3); when stdin runs dry
sudo stops, and PAM counts that empty answer as one more failure.
"""

import json
import os
import subprocess
import time

import pytest
import yaml

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(SCENARIO, "molecule.yml"), encoding="utf-8") as _fh:
    CFG = yaml.safe_load(_fh)["provisioner"]["inventory"]["group_vars"]["all"]
PINS = CFG["hm_sudo_pins"]
DENY = CFG["hm_sudo_pin_deny"]
UNLOCK = CFG["hm_sudo_pin_unlock_time"]
WRONG = "000999"


def login_password(user):
    return "login-%s-Secret1" % user


def prompt(user):
    return CFG["hm_sudo_pin_prompt"].replace("%u", user)


def sudo(instance, user, answers):
    """Run ``sudo -S -k id -un`` as ``user``; ``answers`` are typed one per prompt."""
    stdin = "".join(a + "\n" for a in answers)
    return subprocess.run(
        ["podman", "exec", "-i", "--user", user, instance.name, "sudo", "-S", "-k", "id", "-un"],
        input=stdin, capture_output=True, text=True, timeout=60, check=False)


def became_root(proc):
    return proc.returncode == 0 and proc.stdout.strip() == "root"


def root(instance, *cmd):
    return instance.run(*cmd, check=False)


def reset(instance, user):
    assert root(instance, "faillock", "--user", user, "--reset").returncode == 0


def failures(instance, user):
    """Failure records pam_faillock keeps for ``user`` (as printed by faillock)."""
    out = root(instance, "faillock", "--user", user).stdout
    return [line for line in out.splitlines() if line[:4].isdigit()]


def test_pin_works_and_shows_the_configured_prompt(instance):
    proc = sudo(instance, "alice", [PINS["alice"]])
    assert became_root(proc), proc.stderr
    assert proc.stderr.startswith(prompt("alice"))
    assert "assword" not in proc.stderr


def test_login_password_is_refused(instance):
    proc = sudo(instance, "bob", [login_password("bob")])
    assert not became_root(proc)
    assert proc.stdout == ""
    assert "Sorry, try again." in proc.stderr
    # bob's account is fine otherwise: his PIN works (2 failures < the limit).
    assert became_root(sudo(instance, "bob", [PINS["bob"]]))


def test_wrong_pin_is_refused(instance):
    proc = sudo(instance, "erin", [WRONG])
    assert not became_root(proc) and proc.stdout == ""
    assert "Sorry, try again." in proc.stderr
    reset(instance, "erin")
    other = sudo(instance, "erin", [PINS["alice"]])  # someone else's PIN
    assert not became_root(other) and other.stdout == ""
    reset(instance, "erin")
    assert became_root(sudo(instance, "erin", [PINS["erin"]]))


def test_lockout_after_the_limit_until_reset(instance):
    assert DENY == 3  # the answers below are counted for this limit
    below = sudo(instance, "carol", [WRONG, WRONG, PINS["carol"]])
    assert became_root(below), below.stderr  # two failures do not lock
    assert failures(instance, "carol") == []  # a success clears them
    locking = sudo(instance, "carol", [WRONG, WRONG, WRONG])
    assert not became_root(locking)
    assert "3 incorrect password attempts" in locking.stderr
    assert len(failures(instance, "carol")) >= DENY
    locked = sudo(instance, "carol", [PINS["carol"]] * 3)
    assert not became_root(locked) and locked.stdout == ""
    reset(instance, "carol")
    assert became_root(sudo(instance, "carol", [PINS["carol"]]))


def last_failure(instance, user):
    """Container clock (epoch seconds) of the newest failure pam_faillock recorded."""
    stamps = [" ".join(line.split()[:2]) for line in failures(instance, user)]
    assert stamps, "no failure recorded for %s" % user
    return max(int(root(instance, "date", "-d", stamp, "+%s").stdout) for stamp in stamps)


def timed_sudo(instance, user, answers):
    """Like sudo(), but also return the container's clock when sudo has finished.

    podman exec can take seconds to start and return on a loaded host, and
    each refused attempt inside one sudo run takes about 2 s, so the lock's
    length is measured with the container's own clock right after sudo.
    """
    stdin = "".join(a + "\n" for a in answers)
    proc = subprocess.run(
        ["podman", "exec", "-i", "--user", user, instance.name, "sh", "-c",
         "sudo -S -k id -un; r=$?; date +%s; exit $r"],
        input=stdin, capture_output=True, text=True, timeout=60, check=False)
    lines = proc.stdout.split()
    return int(lines[-1]), proc.returncode == 0 and lines[:-1] == ["root"]


def test_lock_expires_after_unlock_time(instance):
    locking = sudo(instance, "frank", [WRONG, WRONG, WRONG])
    assert not became_root(locking)
    locked_at = last_failure(instance, "frank")
    _finished, ok = timed_sudo(instance, "frank", [PINS["frank"]] * 3)
    assert not ok, "the right PIN worked while frank was locked"
    assert last_failure(instance, "frank") == locked_at, "refused right PINs were counted"
    # Right PINs typed while locked are refused but not counted as failures,
    # so polling with them does not extend the lock.
    deadline = time.monotonic() + UNLOCK + 30
    while time.monotonic() < deadline:
        time.sleep(3)
        finished, ok = timed_sudo(instance, "frank", [PINS["frank"]] * 3)
        if ok:
            break
    else:
        pytest.fail("frank is still locked %d s after the lock (unlock_time %d s)" % (UNLOCK + 30, UNLOCK))
    assert finished - locked_at >= UNLOCK, "unlocked %d s after the lock, before unlock_time" % (
        finished - locked_at)


def test_user_without_pin_cannot_sudo(instance):
    rights = root(instance, "sudo", "-l", "-U", "dave").stdout
    assert "(ALL : ALL) ALL" in rights  # dave may use sudo: only the missing PIN stops him
    for answer in (login_password("dave"), PINS["alice"]):
        proc = sudo(instance, "dave", [answer])
        assert not became_root(proc) and proc.stdout == ""


def test_generated_pin_is_kept_on_the_controller_and_works(instance, ephemeral_dir):
    path = os.path.join(ephemeral_dir, "pins", instance.name, "gina.pin")
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == oct(0o700)
    with open(path, encoding="utf-8") as handle:
        pin = handle.read().strip()
    assert len(pin) == 8 and pin.isdigit()
    assert became_root(sudo(instance, "gina", [pin]))


def test_files_on_the_host(instance):
    host = instance.host
    pam = host.file("/etc/pam.d/sudo")
    assert "common-auth" not in pam.content_string
    assert "pam_userdb.so db=/etc/security/sudo_pin crypt=crypt" in pam.content_string
    db = host.file("/etc/security/sudo_pin.db")
    assert (db.user, db.group, db.mode) == ("root", "root", 0o600)
    dropin = host.file("/etc/sudoers.d/hardened-mailhost-sudo-pin")
    assert dropin.mode == 0o440
    # The database holds SHA-512 crypt strings only, read back through libdb.
    entries = json.loads(root(instance, "python3", "-c",
                              "import dbm.ndbm, json; d = dbm.ndbm.open('/etc/security/sudo_pin');"
                              "print(json.dumps({k.decode(): d[k].decode() for k in d.keys()}))").stdout)
    assert sorted(entries) == ["alice", "bob", "carol", "erin", "frank", "gina"]
    assert all(v.startswith("$6$") and len(v.split("$")[2]) == 16 for v in entries.values())
    assert all(PINS[k] not in entries[k] for k in PINS)


WATCHED = ["/etc/pam.d/sudo", "/etc/security/sudo_pin.db", "/etc/sudoers.d/hardened-mailhost-sudo-pin"]


def checksums(instance):
    return root(instance, "sha256sum", *WATCHED).stdout


@pytest.mark.parametrize("extra,message", [
    ({"sudo_pin_become_user": "dave"}, "Ansible becomes root through sudo as dave"),
    ({"sudo_pin_extra_bad_pin": True}, "trivial"),
    # Removing every PIN would leave nobody able to sudo with a password.
    ({"sudo_pin_extra_all_absent": True}, "at least one user in sudo_pin_users must get a PIN"),
], ids=["become-user-without-pin", "bad-pin", "no-pin-left"])
def test_role_refuses_and_changes_nothing(instance, extra, message):
    extra = dict(extra)  # the parameter is shared by both platforms' runs
    users = [{"name": "alice", "pin": PINS["alice"]}, {"name": "bob", "pin": "271828"}]
    if extra.pop("sudo_pin_extra_bad_pin", False):
        users.append({"name": "carol", "pin": "123456"})
    if extra.pop("sudo_pin_extra_all_absent", False):
        users = [{"name": "alice", "state": "absent"}, {"name": "bob", "state": "absent"}]
    extra_vars = dict(extra, sudo_pin_users=users, sudo_pin_prompt="Changed prompt: ")
    before = checksums(instance)
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    proc = subprocess.run(
        ["ansible-playbook", "-i", inventory, "--limit", instance.name,
         "-e", json.dumps(extra_vars), os.path.join(SCENARIO, "refuse.yml")],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout.replace("\n", " ") or message in proc.stderr
    assert PINS["alice"] not in proc.stdout + proc.stderr
    assert checksums(instance) == before
