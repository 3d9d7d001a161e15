"""A real SSH client (paramiko) that logs in the way a person would."""

import socket

import paramiko


class LoginResult:
    def __init__(self, ok, prompts, error=None, allowed=None):
        self.ok = ok
        self.prompts = prompts  # every keyboard-interactive prompt the server sent
        self.error = error
        self.allowed = allowed  # methods the server still offered after a failure

    def __repr__(self):
        return "LoginResult(ok=%r, prompts=%r, error=%r, allowed=%r)" % (
            self.ok, self.prompts, self.error, self.allowed)


def _transport(port, host="127.0.0.1", timeout=15):
    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    transport.auth_timeout = timeout
    transport.start_client(timeout=timeout)
    return transport


def _run_and_close(transport, command):
    if command is None or not transport.is_authenticated():
        return None
    # The first session of a user starts its systemd user manager, which can
    # take several seconds in a container.
    chan = transport.open_session(timeout=60)
    chan.exec_command(command)
    out = chan.makefile("r").read()
    if isinstance(out, bytes):
        out = out.decode("utf-8", "replace")
    chan.recv_exit_status()
    return out


def key_login(port, user, key_path, command="id -un", host="127.0.0.1"):
    """Public-key login; returns (LoginResult, command output)."""
    transport = _transport(port, host)
    try:
        key = paramiko.Ed25519Key.from_private_key_file(key_path)
        try:
            allowed = transport.auth_publickey(user, key)
        except paramiko.AuthenticationException as exc:
            return LoginResult(False, [], repr(exc), getattr(exc, "allowed_types", None)), None
        result = LoginResult(transport.is_authenticated(), [], allowed=allowed)
        return result, _run_and_close(transport, command)
    finally:
        transport.close()


def prompt_handler(answers, prompts, notes=None):
    """A paramiko keyboard-interactive handler answering from ``answers``.

    ``answers`` maps a lower-case prompt fragment (``"verification code"``,
    ``"password"``) to the reply; a prompt nobody expected gets an empty reply.
    Every prompt is appended to ``prompts`` and every non-empty instruction
    text to ``notes`` (when given), so a test sees exactly what the server asked.
    """
    def handler(_title, instructions, prompt_list):
        if instructions and notes is not None:
            notes.append(instructions)
        replies = []
        for text, _echo in prompt_list:
            prompts.append(text)
            reply = ""
            for fragment, value in answers.items():
                if fragment in text.lower():
                    reply = value
                    break
            replies.append(reply)
        return replies

    return handler


def interactive_login(port, user, answers, command="id -un", host="127.0.0.1"):
    """Keyboard-interactive login answering each prompt from ``answers`` (see prompt_handler)."""
    prompts = []
    handler = prompt_handler(answers, prompts)
    transport = _transport(port, host)
    try:
        try:
            transport.auth_interactive(user, handler)
        except paramiko.AuthenticationException as exc:
            return LoginResult(False, prompts, repr(exc), getattr(exc, "allowed_types", None)), None
        return LoginResult(transport.is_authenticated(), prompts), _run_and_close(transport, command)
    finally:
        transport.close()


def password_login(port, user, password, host="127.0.0.1"):
    """Plain ``password`` method; the hardened server must not even offer it."""
    transport = _transport(port, host)
    try:
        try:
            transport.auth_password(user, password, fallback=False)
        except paramiko.BadAuthenticationType as exc:
            return LoginResult(False, [], repr(exc), exc.allowed_types)
        except paramiko.AuthenticationException as exc:
            return LoginResult(False, [], repr(exc))
        return LoginResult(transport.is_authenticated(), [])
    finally:
        transport.close()
