"""pam_faillock bounds code guessing by someone who has the password.

converge.yml shortens the unlock time to 60 s (deny 3). OpenSSH's per-source
penalties are off for the test clients' address (sshd_2fa_penalty_exempt),
and pam_google_authenticator's own limit (2 logins per 30 s) is waited out
before the locked attempt, so the refusal below can only come from the lock.
"""

import os
import time

from hmtest import ssh

import sshd2fa_helpers as h

USER = "mia"
UNLOCK_TIME = 60  # sshd_2fa_faillock_unlock_time in converge.yml
FAILLOCK_DIR = "/run/faillock-sshd"


def _failures(instance):
    out = instance.run("faillock", "--dir", FAILLOCK_DIR, "--user", USER).stdout
    return [line for line in out.splitlines() if line.strip() and line.strip()[0].isdigit()]


def test_wrong_codes_lock_the_code_path_but_not_the_key(instance, ephemeral_dir):
    port = instance.port(22)
    instance.run("faillock", "--dir", FAILLOCK_DIR, "--user", USER, "--reset")  # a clean start on reruns
    generator = h.totp(instance, USER)
    answers_wrong = {"verification code": h.unused_code(generator), "password": h.password(USER)}

    # deny = 3 wrong codes, each with the right password. (The third one meets
    # pam_google_authenticator's own limit, 2 per 30 s: it fails without a code
    # prompt, and counts all the same.)
    for attempt in range(3):
        conn, prompts, _notes = h.interactive(port, USER, answers_wrong)
        assert conn is None, "a wrong code logged in"
        assert any("password" in p.lower() for p in prompts), prompts
        if attempt == 0:
            assert any("verification code" in p.lower() for p in prompts), prompts
    last_failure = time.time()
    assert len(_failures(instance)) == 3, instance.run("faillock", "--dir", FAILLOCK_DIR, "--user", USER).stdout

    # Past pam_google_authenticator's RATE_LIMIT window (2 per 30 s), so only
    # the lock can refuse the right code and the right password now.
    time.sleep(max(0, last_failure + 32 - time.time()))
    code = generator.now()
    conn, prompts, notes = h.interactive(port, USER, {"verification code": code, "password": h.password(USER)})
    assert conn is None, "a locked user logged in with code and password"
    # Locked: no factor is even asked (nothing to guess against), and PAM says why.
    assert not any("verification code" in p.lower() for p in prompts), prompts
    assert any("locked" in note.lower() for note in notes), notes
    assert len(_failures(instance)) == 3  # the refused attempt does not extend the lock

    # The public-key path stays open while the code path is locked.
    result, out = ssh.key_login(port, USER, os.path.join(ephemeral_dir, "id_ed25519"))
    assert result.ok, result
    assert out.strip() == USER

    # After the unlock time the right code and password work again ...
    time.sleep(max(0, last_failure + UNLOCK_TIME + 3 - time.time()))
    code = generator.now()
    conn, prompts, _notes = h.interactive(port, USER, {"verification code": code, "password": h.password(USER)})
    assert conn is not None, prompts
    try:
        assert h.run(conn, "id -un").strip() == USER
    finally:
        conn.close()
    # ... and a successful login clears the tally.
    assert _failures(instance) == []


def test_effective_pam_stack_counts_every_failure(instance):
    """The lock sits around the whole code + password pair, with no account-phase reset."""
    pam = instance.host.file("/etc/pam.d/sshd").content_string
    lines = [line.split("#")[0].strip() for line in pam.splitlines()]
    auth = [line for line in lines if line.startswith("auth")]
    assert "pam_faillock.so preauth" in auth[0] and auth[0].split()[1] == "requisite", auth
    assert "pam_faillock.so authsucc" in auth[-1], auth
    assert not any("pam_faillock" in line for line in lines if line.startswith("account")), lines
    assert "even_deny_root" not in pam
