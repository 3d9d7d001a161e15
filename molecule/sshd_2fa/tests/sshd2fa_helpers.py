"""Helpers shared by the sshd_2fa scenario's tests (playbook runs, logins)."""

import contextlib
import fcntl
import os
import re
import subprocess
import time

import paramiko
import pyotp

from hmtest import ssh

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.path.dirname(HERE)
REPO = os.path.abspath(os.path.join(SCENARIO, "..", ".."))


def password(user):
    return "pw-%s-Secret1" % user


def totp(instance, user):
    first_line = instance.run("head", "-n1", "/home/%s/.google_authenticator" % user).stdout.strip()
    return pyotp.TOTP(first_line)


def unused_code(generator):
    """A six-digit code that is wrong in every step the server could accept."""
    now = time.time()
    valid = {generator.at(now + 30 * step) for step in range(-5, 6)}
    candidate = int(generator.now())
    while "%06d" % candidate in valid:
        candidate = (candidate + 7919) % 1000000
    return "%06d" % candidate


@contextlib.contextmanager
def host_lock(instance):
    """One playbook run per container at a time (the tests run side by side).

    A refusal test plants files that every other converge of that host would
    trip over, so playbook runs against one host take turns.
    """
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "playbook-%s.lock" % instance.name)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def playbook(path, *extra_args, env=None, timeout=600):
    """Run a playbook against the scenario's inventory; ``flat`` is the output on one line."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        ["ansible-playbook", "-i", os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]), path, *extra_args],
        capture_output=True, text=True, timeout=timeout, env=full_env,
    )
    # Messages are folded over several lines in the YAML callback output.
    proc.flat = " ".join((proc.stdout + proc.stderr).replace("'", " ").replace('"', " ").split())
    return proc


def converge(*extra_args, env=None):
    return playbook(os.path.join(SCENARIO, "converge.yml"), *extra_args, env=env)


def recap_changed(stdout):
    recap = stdout[stdout.rindex("PLAY RECAP"):]
    return [int(n) for n in re.findall(r"changed=(\d+)", recap)]


def transport(port):
    return ssh._transport(port)  # pylint: disable=protected-access


def interactive(port, user, answers):
    """Keyboard-interactive login; returns (transport or None, prompts, instructions).

    Unlike hmtest.ssh.interactive_login it keeps the server's instruction
    texts (pam_faillock tells a locked user there) and hands back the open
    transport on success, for SFTP or forwarding requests.
    """
    prompts, notes = [], []
    handler = ssh.prompt_handler(answers, prompts, notes)
    conn = transport(port)
    try:
        conn.auth_interactive(user, handler)
    except paramiko.AuthenticationException:
        conn.close()
        return None, prompts, notes
    if not conn.is_authenticated():
        conn.close()
        return None, prompts, notes
    return conn, prompts, notes


def key_transport(port, user, key_path):
    conn = transport(port)
    try:
        conn.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(key_path))
    except paramiko.AuthenticationException:
        conn.close()
        raise
    return conn


def run(conn, command):
    return ssh._run_and_close(conn, command)  # pylint: disable=protected-access


def playbook_on_tty(path, *extra_args, env=None, timeout=600):
    """Run a playbook the way an operator does, in a terminal of its own.

    stdout and stderr (what callbacks write, what a job log keeps) go to a
    pipe; whatever reaches the terminal device is collected apart. Returns
    (returncode, stdout + stderr, terminal text).
    """
    import pty  # pylint: disable=import-outside-toplevel
    import select  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    full_env = dict(os.environ)
    full_env.update(env or {})
    argv = ["ansible-playbook", "-i", os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]), path, *extra_args]
    with tempfile.TemporaryFile() as log:
        pid, master = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            os.execvpe(argv[0], argv, full_env)
        tty = b""
        status = None
        deadline = time.time() + timeout
        while status is None and time.time() < deadline:
            ready, _w, _x = select.select([master], [], [], 1)
            chunk = b""
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child and every grandchild closed the terminal
                    chunk = b""
                tty += chunk
            if not chunk:
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = code
        if status is None:
            os.kill(pid, 9)
            _pid, status = os.waitpid(pid, 0)
        os.close(master)
        log.seek(0)
        output = log.read().decode("utf-8", "replace")
    return os.waitstatus_to_exitcode(status), output, tty.decode("utf-8", "replace")
