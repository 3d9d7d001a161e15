"""sudo_pin: real sudo, run as normal users inside the containers, answering with PINs.

Each negative case has its own user: pam_faillock counts failures per user.
sudo -S reads one line of stdin per attempt (at most 3); when stdin runs dry
sudo stops, and PAM counts that empty answer as one more failure.
"""

import contextlib
import fcntl
import json
import os
import re
import subprocess
import tempfile
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
    path = os.path.join(ephemeral_dir, "pins", instance.name, "gina@%s.pin" % instance.name)
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
    # kim gets her PIN from the JSONL test, which may run before this one.
    assert set(entries) - {"kim"} == {"alice", "bob", "carol", "erin", "frank", "gina", "hank", "ivan"}
    assert all(v.startswith("$6$") and len(v.split("$")[2]) == 16 for v in entries.values())
    assert all(PINS[k] not in entries[k] for k in PINS)


WATCHED = ["/etc/pam.d/sudo", "/etc/pam.d/sudo-i", "/etc/security/sudo_pin.db",
           "/etc/sudoers.d/hardened-mailhost-sudo-pin"]


def checksums(instance):
    return root(instance, "sha256sum", *WATCHED).stdout


@contextlib.contextmanager
def role_run_lock(instance, ephemeral_dir):
    """Runs of the role, and the polkit test, take their turns on one container.

    The verifier runs tests side by side; a refusal case compares checksums
    around its run, which another test's run (or polkit installed meanwhile)
    would spoil.
    """
    with open(os.path.join(ephemeral_dir, "role-run-%s.lock" % instance.name), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_role(instance, playbook, extra_vars, env=None):
    """ansible-playbook on this container alone (Molecule's inventory), return CompletedProcess."""
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    return subprocess.run(
        ["ansible-playbook", "-i", inventory, "--limit", instance.name,
         "-e", json.dumps(extra_vars), os.path.join(SCENARIO, playbook)],
        capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, **(env or {})))


# Bad input the role must refuse, one case each: (case id, extra vars, words of the message).
REFUSAL_CASES = [
    ("become-user-without-pin", {"sudo_pin_become_user": "dave"}, "Ansible becomes root through sudo as dave"),
    ("bad-pin", {"sudo_pin_users": [{"name": "carol", "pin": "123456"}]}, "trivial"),
    # Removing every PIN would leave nobody able to sudo with a password.
    ("no-pin-left", {"sudo_pin_users": [{"name": "alice", "state": "absent"}, {"name": "bob", "state": "absent"}]},
     "at least one user in sudo_pin_users must get a PIN"),
    # pam_userdb's db= takes the name without .db: with it, PAM would open sudo_pin.db.db.
    ("db-with-suffix", {"sudo_pin_db": "/etc/security/sudo_pin.db"}, "without the .db suffix"),
    # Two entries for one user: which PIN would count?
    ("user-twice", {"sudo_pin_users": [{"name": "alice", "pin": PINS["alice"]}, {"name": "alice", "pin": "271828"}]},
     "each user at most once in sudo_pin_users"),
    # A generated PIN the operator cannot receive must not be stored: lena keeps no PIN.
    ("pin-file-unwritable", {"sudo_pin_users": [{"name": "lena", "generate": True}]}, "cannot create the folder"),
]


def test_role_refuses_bad_input_and_changes_nothing(instance, ephemeral_dir):
    base_users = [{"name": "alice", "pin": PINS["alice"]}, {"name": "bob", "pin": "271828"}]
    # A plain file where the folder for the PIN files would go.
    blocker = os.path.join(ephemeral_dir, "not-a-folder-%s" % instance.name)
    with open(blocker, "w", encoding="utf-8") as handle:
        handle.write("in the way\n")
    report = os.path.join(ephemeral_dir, "refusals-%s.json" % instance.name)
    if os.path.exists(report):
        os.unlink(report)
    cases = []
    for case_id, extra, _message in REFUSAL_CASES:
        case_vars = dict(extra)
        if case_id in ("bad-pin", "pin-file-unwritable"):
            case_vars["sudo_pin_users"] = base_users + extra["sudo_pin_users"]
        case_vars.setdefault("sudo_pin_users", base_users)
        if case_id == "pin-file-unwritable":
            case_vars["sudo_pin_generated_dest"] = os.path.join(blocker, "pins")
        cases.append({"id": case_id, "vars": case_vars})
    with role_run_lock(instance, ephemeral_dir):
        before = checksums(instance)
        proc = run_role(instance, "refusals.yml", {"hm_refusal_cases": cases, "hm_refusals_file": report})
        after = checksums(instance)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    with open(report, encoding="utf-8") as handle:
        refusals = json.load(handle)
    problems = []
    for case_id, _extra, message in REFUSAL_CASES:
        text = " ".join(refusals.get(case_id, "MISSING").split())
        if message not in text:
            problems.append("%s: %s" % (case_id, text[:300]))
    assert problems == []
    assert PINS["alice"] not in proc.stdout + proc.stderr
    assert after == before
    assert "lena" not in db_entries(instance)


def db_entries(instance):
    """The PIN database's entries, read back through libdb as root."""
    return json.loads(root(instance, "python3", "-c",
                           "import dbm.ndbm, json; d = dbm.ndbm.open('/etc/security/sudo_pin');"
                           "print(json.dumps({k.decode(): d[k].decode() for k in d.keys()}))").stdout)


# --- every way a sudo user reaches root wants the PIN (issue 12, item 1) ---

# Each command prints something only root can produce: its user name, or the
# first line of /etc/shadow through sudoedit with cat as the "editor".
SUDO_MODES = {
    "sudo": ["sudo", "-S", "-k", "id", "-un"],
    "sudo -s": ["sudo", "-S", "-k", "-s", "id", "-un"],
    "sudo -i": ["sudo", "-S", "-k", "-i", "id", "-un"],
    "sudo --login": ["sudo", "-S", "-k", "--login", "id", "-un"],
    "sudo -u root -i": ["sudo", "-S", "-k", "-u", "root", "-i", "id", "-un"],
    "sudoedit": ["env", "SUDO_EDITOR=cat", "sudoedit", "-S", "-k", "/etc/shadow"],
}


def run_mode(instance, user, mode, answers):
    stdin = "".join(a + "\n" for a in answers)
    proc = subprocess.run(
        ["podman", "exec", "-i", "--user", user, "-w", "/tmp", instance.name] + SUDO_MODES[mode],
        input=stdin, capture_output=True, text=True, timeout=60, check=False)
    lines = proc.stdout.splitlines()
    rooted = proc.returncode == 0 and bool(lines) and (
        lines[0].startswith("root:") if mode == "sudoedit" else lines == ["root"])
    return rooted, proc


def test_every_sudo_mode_wants_the_pin_and_counts_failures(instance):
    user = "hank"
    problems = []
    reset(instance, user)
    for mode in SUDO_MODES:
        rooted, proc = run_mode(instance, user, mode, [login_password(user)])
        if rooted or proc.stdout:
            problems.append("%s: the login password gave root" % mode)
        if not failures(instance, user):
            problems.append("%s: the refused login password was not counted by pam_faillock" % mode)
        reset(instance, user)
        rooted, proc = run_mode(instance, user, mode, [PINS[user]])
        if not rooted:
            problems.append("%s: the PIN was refused: %s" % (mode, proc.stderr.strip()))
        elif not proc.stderr.startswith(prompt(user)):
            problems.append("%s: no PIN prompt (%r)" % (mode, proc.stderr[:80]))
    # One lock covers every mode: locked through plain sudo, the login
    # shell mode refuses even the right PIN.
    run_mode(instance, user, "sudo", [WRONG] * 3)
    for mode in ("sudo -i", "sudoedit"):
        rooted, _proc = run_mode(instance, user, mode, [PINS[user]])
        if rooted:
            problems.append("%s: the PIN worked while the user was locked" % mode)
    reset(instance, user)
    assert problems == []


def test_login_shell_pam_service_is_the_pin_stack(instance):
    for service in ("sudo", "sudo-i"):
        text = instance.host.file("/etc/pam.d/" + service).content_string
        assert "common-auth" not in text, service
        assert "pam_userdb.so db=/etc/security/sudo_pin crypt=crypt" in text, service


# --- the lockout cannot be reset by the locked-out user (issue 12, item 2) ---

# sudoers takes the last matching rule: sort after the scenario's hm-test-users.
NOPASSWD_RULE = "/etc/sudoers.d/zz-hm-test-ivan-nopasswd"


def test_commands_without_authentication_do_not_clear_the_failures(instance):
    user = "ivan"
    reset(instance, user)
    proc = root(instance, "sh", "-c",
                "printf '%%s\\n' '%s ALL=(root) NOPASSWD: /usr/bin/true' > %s.tmp && chmod 0440 %s.tmp"
                " && visudo -cf %s.tmp && mv %s.tmp %s"
                % (user, NOPASSWD_RULE, NOPASSWD_RULE, NOPASSWD_RULE, NOPASSWD_RULE, NOPASSWD_RULE))
    assert proc.returncode == 0, proc.stderr
    try:
        for _attempt in range(DENY):
            if len(failures(instance, user)) >= DENY - 1:
                break
            sudo(instance, user, [WRONG])
        assert len(failures(instance, user)) == DENY - 1
        # What an attacker with ivan's shell can run without any PIN: both
        # reach sudo's account phase.
        for cmd in (["sudo", "-n", "-u", user, "true"], ["sudo", "-n", "/usr/bin/true"]):
            run = subprocess.run(["podman", "exec", "--user", user, instance.name] + cmd,
                                 capture_output=True, text=True, timeout=60, check=False)
            assert run.returncode == 0, (cmd, run.stderr)  # needed no authentication
        assert len(failures(instance, user)) == DENY - 1, "a command without PIN cleared the failures"
        last = sudo(instance, user, [WRONG, WRONG, WRONG])
        assert not became_root(last)
        locked = sudo(instance, user, [PINS[user]] * 3)
        assert not became_root(locked) and locked.stdout == "", "the right PIN worked: not locked"
    finally:
        root(instance, "rm", "-f", NOPASSWD_RULE)
        reset(instance, user)
    assert became_root(sudo(instance, user, [PINS[user]]))


# --- polkit and run0 (issue 12, item 1) ---

def package_installed(instance, name):
    status = root(instance, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}", name).stdout
    return status[1:2] == "i"


def test_run0_does_not_make_a_sudo_member_root_without_polkit(instance):
    present = root(instance, "sh", "-c", "command -v run0 || true").stdout.strip()
    if instance.platform == "debian12":
        assert present == ""  # systemd 252 has no run0
        return
    assert present == "/usr/bin/run0"
    assert not package_installed(instance, "polkitd")
    assert "sudo" in root(instance, "id", "-Gn", "judy").stdout.split()
    proc = subprocess.run(
        ["podman", "exec", "-i", "--user", "judy", instance.name, "run0", "id", "-un"],
        input=login_password("judy") + "\n", capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "Access denied" in proc.stderr


def test_role_refuses_while_polkit_is_installed(instance, ephemeral_dir):
    with role_run_lock(instance, ephemeral_dir):
        before = checksums(instance)
        install = root(instance, "sh", "-c",
                       "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends"
                       " pkexec >/tmp/hm-polkit.log 2>&1 || { tail -20 /tmp/hm-polkit.log; exit 1; }")
        try:
            assert install.returncode == 0, install.stdout + install.stderr
            # Why polkit is a way around the PIN: it authenticates with
            # common-auth (the login password) and counts group sudo as admins.
            # (The package ships its PAM file in /usr/lib/pam.d; /etc/pam.d would override it.)
            polkit_pam = root(instance, "sh", "-c",
                              "cat /etc/pam.d/polkit-1 2>/dev/null || cat /usr/lib/pam.d/polkit-1").stdout
            polkit_rules = root(instance, "sh", "-c", "cat /usr/share/polkit-1/rules.d/*.rules").stdout
            proc = run_role(instance, "refuse.yml", {
                "sudo_pin_users": [{"name": "alice", "pin": PINS["alice"]}],
                "sudo_pin_prompt": "Changed prompt: "})
            after = checksums(instance)
        finally:
            removed = root(instance, "sh", "-c",
                           "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q --autoremove"
                           " pkexec polkitd >/tmp/hm-polkit.log 2>&1 || { tail -20 /tmp/hm-polkit.log; exit 1; }")
    assert removed.returncode == 0, removed.stdout
    assert not package_installed(instance, "polkitd") and not package_installed(instance, "pkexec")
    assert proc.returncode != 0
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "polkit is installed" in text and "pkexec" in text and "apt purge" in text, text[-2000:]
    assert after == before
    assert "@include common-auth" in polkit_pam
    assert "unix-group:sudo" in polkit_rules


# --- no secret in any callback's record (issue 12, item 3) ---

def test_generated_pin_reaches_no_callback_and_works(instance, ephemeral_dir):
    dest = tempfile.mkdtemp(prefix="pins-jsonl-", dir=ephemeral_dir)
    users = [{"name": name, "pin": PINS[name]} for name in sorted(PINS)]
    users.append({"name": "kim", "generate": True})
    with role_run_lock(instance, ephemeral_dir):
        # kim starts without a PIN, also when the verifier runs again.
        inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
        subprocess.run(["ansible", "-i", inventory, instance.name, "-m", "hardened.mailhost.userdb_pin",
                        "-a", "user=kim state=absent"], capture_output=True, timeout=120, check=True)
        assert "kim" not in db_entries(instance)
        proc = run_role(instance, "apply.yml", {"sudo_pin_users": users, "sudo_pin_generated_dest": dest},
                        env={"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.jsonl"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # The JSONL callback really recorded the run, task results included.
    assert any(r.get("_event") == "v2_runner_on_ok" for r in records)
    path = os.path.join(dest, "kim@%s.pin" % instance.name)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    assert oct(os.stat(dest).st_mode & 0o777) == oct(0o700)
    with open(path, encoding="utf-8") as handle:
        pin = handle.read().strip()
    assert len(pin) == 8 and pin.isdigit()
    assert became_root(sudo(instance, "kim", [pin]))
    output = proc.stdout + proc.stderr
    assert pin not in output
    for name, known in PINS.items():
        # Not a substring of a longer number (durations, microseconds).
        assert not re.search(r"(?<![0-9.])%s(?![0-9])" % known, output), name
    assert "kim" in output  # the run named the user it made a PIN for
