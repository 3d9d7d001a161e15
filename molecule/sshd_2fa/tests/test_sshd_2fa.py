"""SSH logins against the hardened sshd, from the host through 127.0.0.1.

Each case uses its own account (see prepare_tasks.yml): the TOTP module
rate-limits per user and remembers used codes.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from hmtest import ssh

import sshd2fa_helpers as h

HERE = os.path.dirname(os.path.abspath(__file__))

# The scenario's shared helpers (also used by the lockout and forwarding tests).
password = h.password
totp = h.totp
unused_code = h.unused_code


@pytest.fixture(scope="module")
def port(instance):
    return instance.port(22)


def test_key_login_works(instance, port, ephemeral_dir):
    result, out = ssh.key_login(port, "keyuser", os.path.join(ephemeral_dir, "id_ed25519"))
    assert result.ok, result
    assert out.strip() == "keyuser"


def test_code_and_password_log_in(instance, port):
    code = totp(instance, "alice").now()
    result, out = ssh.interactive_login(port, "alice", {"verification code": code, "password": password("alice")})
    assert result.ok, result
    assert out.strip() == "alice"
    # The code is asked first, then the password.
    assert "verification code" in result.prompts[0].lower()
    assert "password" in result.prompts[-1].lower()


def test_right_password_wrong_code_fails(instance, port):
    code = unused_code(totp(instance, "bob"))
    result, _ = ssh.interactive_login(port, "bob", {"verification code": code, "password": password("bob")})
    assert not result.ok, result


def test_right_code_wrong_password_fails(instance, port):
    code = totp(instance, "carol").now()
    result, _ = ssh.interactive_login(port, "carol", {"verification code": code, "password": "not-" + password("carol")})
    assert not result.ok, result


def test_password_alone_fails(instance, port):
    # The plain "password" method is not even offered ...
    result = ssh.password_login(port, "dave", password("dave"))
    assert not result.ok, result
    assert "password" not in (result.allowed or []), result
    assert "keyboard-interactive" in (result.allowed or []), result
    # ... and keyboard-interactive with the password but no code fails.
    result, _ = ssh.interactive_login(port, "dave", {"verification code": "", "password": password("dave")})
    assert not result.ok, result
    assert any("verification code" in p.lower() for p in result.prompts), result


def test_replayed_code_fails(instance, port):
    code = totp(instance, "erin").now()
    answers = {"verification code": code, "password": password("erin")}
    first, _ = ssh.interactive_login(port, "erin", answers)
    assert first.ok, first
    second, _ = ssh.interactive_login(port, "erin", answers)
    assert not second.ok, second


def test_user_without_secret_fails(instance, port):
    assert not instance.host.file("/home/frank/.google_authenticator").exists
    result, _ = ssh.interactive_login(port, "frank", {"verification code": "123456", "password": password("frank")})
    assert not result.ok, result


def _login_from_inside(instance, user, answers):
    """Log in from inside the container to its own (trusted) address.

    The same client code runs there with Debian's paramiko.
    """
    client = os.path.join(HERE, "..", "..", "common", "hmtest", "ssh.py")
    subprocess.run(["podman", "cp", client, "%s:/tmp/hm_ssh.py" % instance.name], check=True)
    script = (
        "import sys; sys.path.insert(0, '/tmp'); import hm_ssh, json\n"
        "r, out = hm_ssh.interactive_login(22, %r, %r, host=%r)\n"
        "print(json.dumps({'ok': r.ok, 'prompts': r.prompts, 'out': out}))\n" % (user, answers, instance.address)
    )
    return json.loads(instance.run("python3", "-c", script).stdout)


def test_trusted_network_skips_the_code(instance):
    result = _login_from_inside(instance, "grace", {"password": password("grace")})
    assert result["ok"], result
    assert result["out"].strip() == "grace"
    assert not any("verification code" in p.lower() for p in result["prompts"]), result


def test_trusted_network_still_needs_the_password(instance):
    result = _login_from_inside(instance, "grace", {"password": "not-" + password("grace")})
    assert not result["ok"], result


def test_other_network_must_give_the_code(instance, port):
    # From the host the login arrives from the podman gateway: not trusted.
    result, _ = ssh.interactive_login(port, "ivan", {"password": password("ivan")})
    assert not result.ok, result
    assert any("verification code" in p.lower() for p in result.prompts), result


def test_ssh_audit_reports_no_failures(instance, port):
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ssh-audit"), "-j", "-p", str(port), "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    report = json.loads(proc.stdout)
    failures = [
        "%s %s: %s" % (kind, item.get("algorithm"), item["notes"]["fail"])
        for kind in ("kex", "key", "enc", "mac")
        for item in report.get(kind, [])
        if item.get("notes", {}).get("fail")
    ]
    assert failures == []
    kex = [item["algorithm"] for item in report["kex"]]
    expected_first = "mlkem768x25519-sha256" if instance.platform == "debian13" else "sntrup761x25519-sha512@openssh.com"
    assert kex[0] == expected_first
    offered = {item["algorithm"] for kind in ("kex", "key") for item in report.get(kind, [])}
    assert not [a for a in offered if "nistp" in a or a in ("ssh-rsa", "ssh-dss")]
    assert not [m["algorithm"] for m in report["mac"] if not m["algorithm"].endswith("-etm@openssh.com")]


def test_files_and_effective_config(instance):
    host = instance.host
    secret = host.file("/home/alice/.google_authenticator")
    assert secret.user == "alice" and secret.mode == 0o400
    pam = host.file("/etc/pam.d/sshd").content_string
    # The code is asked before the password, and no module accepts an empty one.
    assert pam.index("pam_google_authenticator.so") < pam.index("pam_unix.so")
    assert "nullok" not in pam
    trusted = host.file("/etc/security/hardened-mailhost-sshd-trusted.conf").content_string
    assert trusted.strip().splitlines()[-1] == "- : ALL : ALL"
    effective = host.run("sshd -T -C user=alice,host=x,addr=192.0.2.1").stdout.splitlines()
    assert "passwordauthentication no" in effective
    assert "permitrootlogin without-password" in effective or "permitrootlogin prohibit-password" in effective


def _converge(instance, *extra_args):
    with h.host_lock(instance):
        return h.converge(*extra_args)


def test_refuses_to_require_a_code_a_user_cannot_give(instance):
    """Enrolment off and a listed user without a secret: fail, change nothing."""
    if instance.platform != "debian12":
        pytest.skip("one run covers both platforms")
    before = {i.name: i.host.file("/etc/pam.d/sshd").sha256sum for i in [instance]}
    proc = _converge(instance, "--limit", instance.name, "-e",
                     '{"sshd_2fa_enroll": false, "sshd_2fa_users": ["alice", "frank"]}')
    assert proc.returncode != 0
    assert "have no ~/.google_authenticator: frank" in proc.flat
    assert "changed=0" in proc.stdout[proc.stdout.rindex("PLAY RECAP"):]
    assert before == {i.name: i.host.file("/etc/pam.d/sshd").sha256sum for i in [instance]}
    assert not instance.host.file("/home/frank/.google_authenticator").exists


def test_refuses_unknown_user_and_bad_network(instance):
    if instance.platform != "debian13":
        pytest.skip("one run covers both platforms")
    proc = _converge(instance, "--limit", instance.name, "-e", '{"sshd_2fa_users": ["alice", "nosuchuser"]}')
    assert proc.returncode != 0 and "do not exist" in proc.flat and "nosuchuser" in proc.flat
    proc = _converge(instance, "--limit", instance.name, "-e", '{"sshd_2fa_trusted_networks": ["10.0.0.0/8; rm -rf /"]}')
    assert proc.returncode != 0 and "are not: 10.0.0.0/8; rm -rf /" in proc.flat


def test_second_converge_after_real_logins_changes_nothing(instance):
    """The PAM module rewrites ~/.google_authenticator at each login; that is not drift."""
    if instance.platform != "debian12":
        pytest.skip("one run covers both platforms")
    proc = _converge(instance, "--limit", instance.name)
    assert proc.returncode == 0, proc.stdout[-3000:]
    recap = proc.stdout[proc.stdout.rindex("PLAY RECAP"):]
    changed = [int(n) for n in re.findall(r"changed=(\d+)", recap)]
    assert changed and not any(changed), recap


def _jsonl_events(output):
    events = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_enroll_playbook_keeps_every_secret_out_of_the_job_log(instance, ephemeral_dir):
    """playbooks/enroll_totp.yml, run in a terminal with the JSONL callback (what AWX keeps).

    The QR code reaches the terminal only; the seed, the otpauth URI and the
    scratch codes (read back from the host) are in no callback output. Files
    are 0600 in a 0700 folder; the recovery sheet names neither user nor host;
    a rerun shows nothing; a rotation makes a new seed, equally absent.
    """
    playbook = os.path.join(HERE, "..", "..", "..", "playbooks", "enroll_totp.yml")
    dest = os.path.join(ephemeral_dir, "enroll-judy-%s" % instance.platform)
    shutil.rmtree(dest, ignore_errors=True)  # files of an earlier run are not this host's: refused
    secret_file = "/home/judy/.google_authenticator"
    env = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.jsonl", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}

    def enroll(*extra):
        with h.host_lock(instance):
            code, output, tty = h.playbook_on_tty(
                playbook, "-e", "target=" + instance.name, "-e", "sshd_2fa_enroll_dest=" + dest,
                "-e", '{"sshd_2fa_users": ["judy"], "sshd_2fa_totp_scratch_codes": 4}', *extra, env=env)
        assert code == 0, output[-3000:]
        events = _jsonl_events(output)
        assert events and events[-1]["_event"] == "v2_playbook_on_stats", output[-2000:]
        return output, tty, events[-1]["stats"][instance.name]["changed"]

    def secrets_on_host():
        lines = instance.run("cat", secret_file).stdout.splitlines()
        seed = lines[0].strip()
        codes = [line.strip() for line in lines[1:] if line.strip().isdigit()]
        return seed, codes

    def assert_nothing_secret_in(output, seed, codes):
        assert seed not in output and seed.lower() not in output
        assert "otpauth://" not in output and "otpauth%3A" not in output
        for code in codes:
            assert code not in output and "%s %s" % (code[:4], code[4:]) not in output
        # No QR code either (a QR is the secret): no half blocks in any record.
        assert not any(ch in output for ch in "\u2580\u2584\u2588")

    output, tty, changed = enroll()
    seed, codes = secrets_on_host()
    assert changed > 0 and len(codes) == 4
    assert_nothing_secret_in(output, seed, codes)
    # The operator saw the code on the terminal.
    assert "\u2580" in tty or "\u2584" in tty or "\u2588" in tty, tty[-500:]
    assert "judy" in output  # the job log says whom it enrolled, nothing more
    assert os.stat(dest).st_mode & 0o777 == 0o700
    files = sorted(f for f in os.listdir(dest) if not f.startswith("."))
    base = "judy@" + instance.name
    assert files == [base + "-recovery.txt", base + ".png", base + ".svg"]
    assert all(os.stat(os.path.join(dest, f)).st_mode & 0o777 == 0o600 for f in os.listdir(dest))
    with open(os.path.join(dest, base + "-recovery.txt"), encoding="utf-8") as sheet:
        text = sheet.read()
    assert all("%s %s" % (code[:4], code[4:]) in text for code in codes)
    # Seed fidelity: no user name and no host next to the codes.
    hostname = instance.run("hostname", "-f", check=False).stdout.strip() or instance.name
    for identifying in ("judy", hostname, hostname.split(".")[0], "example.test", instance.name):
        assert identifying.lower() not in text.lower(), identifying

    again_output, again_tty, again_changed = enroll()
    assert again_changed == 0
    assert not any(ch in again_tty for ch in "\u2580\u2584\u2588")
    assert_nothing_secret_in(again_output, seed, codes)

    rotated_output, _tty, _changed = enroll("-e", "sshd_2fa_totp_rotate=true")
    new_seed, new_codes = secrets_on_host()
    assert new_seed != seed
    assert_nothing_secret_in(rotated_output, new_seed, new_codes)


def test_a_secret_nobody_could_save_is_taken_back(instance, ephemeral_dir):
    """Issue 17: a new secret shown to nobody never stays in force.

    The QR folder cannot be made (a plain file stands where it would go), so
    the enrolment fails for the host, says why, and the user's first secret
    is removed again: the host is as it was before the run.
    """
    user = "quinn"
    instance.run("sh", "-c", "id %s >/dev/null 2>&1 || useradd -m -s /bin/bash %s" % (user, user))
    instance.run("rm", "-f", "/home/%s/.google_authenticator" % user)
    blocker = os.path.join(ephemeral_dir, "not-a-folder-%s" % instance.platform)
    with open(blocker, "w", encoding="utf-8") as handle:
        handle.write("in the way\n")
    playbook = os.path.join(HERE, "..", "..", "..", "playbooks", "enroll_totp.yml")
    with h.host_lock(instance):
        proc = h.playbook(playbook, "-e", "target=" + instance.name,
                          "-e", "sshd_2fa_enroll_dest=" + os.path.join(blocker, "totp"),
                          "-e", '{"sshd_2fa_users": ["%s"], "totp_show_qr": false}' % user)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "could not be saved on the controller" in proc.flat, proc.flat[-2000:]
    assert "cannot create the folder" in proc.flat, proc.flat[-2000:]
    assert "First secrets taken back" in proc.flat and user in proc.flat
    assert not instance.host.file("/home/%s/.google_authenticator" % user).exists
    with open(blocker, encoding="utf-8") as handle:
        assert handle.read() == "in the way\n"
