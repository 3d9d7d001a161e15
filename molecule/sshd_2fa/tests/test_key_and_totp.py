"""sshd_2fa_mode=key_and_totp: a key, then a TOTP code; the password is never asked."""

import os

import paramiko
import pyotp
import pytest

from hmtest import ssh

pytestmark = pytest.mark.key_and_totp


def _code(instance, user):
    return pyotp.TOTP(instance.run("head", "-n1", "/home/%s/.google_authenticator" % user).stdout.strip()).now()


def test_key_alone_is_only_a_partial_success(instance, ephemeral_dir):
    result, out = ssh.key_login(instance.port(22), "keyuser", os.path.join(ephemeral_dir, "id_ed25519"))
    assert not result.ok, result
    assert result.allowed == ["keyboard-interactive"], result
    assert out is None


def test_key_then_code_logs_in_without_password(instance, ephemeral_dir):
    key = paramiko.Ed25519Key.from_private_key_file(os.path.join(ephemeral_dir, "id_ed25519"))
    prompts = []
    code = _code(instance, "keyuser")

    def handler(_title, _instructions, prompt_list):
        prompts.extend(text for text, _echo in prompt_list)
        return [code for _text in prompt_list]

    transport = ssh._transport(instance.port(22))  # pylint: disable=protected-access
    try:
        assert transport.auth_publickey("keyuser", key) == ["keyboard-interactive"]
        transport.auth_interactive("keyuser", handler)
        assert transport.is_authenticated()
    finally:
        transport.close()
    assert len(prompts) == 1 and "verification code" in prompts[0].lower(), prompts


def test_code_and_password_without_key_fail(instance):
    result, _out = ssh.interactive_login(instance.port(22), "alice", {
        "verification code": _code(instance, "alice"), "password": "pw-alice-Secret1"})
    assert not result.ok, result


def test_connecting_user_keeps_key_only_login(instance, ephemeral_dir):
    result, out = ssh.key_login(instance.port(22), "root", os.path.join(ephemeral_dir, "hm_admin_key"))
    assert result.ok, result
    assert out.strip() == "root"
