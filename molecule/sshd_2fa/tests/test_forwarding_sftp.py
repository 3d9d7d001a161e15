"""Forwarding is off unless opted in; SFTP goes through the same two factors."""

import os
import time
import uuid

import paramiko
import pytest

import sshd2fa_helpers as h

JOURNAL_SOCKET = "/run/systemd/journal/stdout"
PROHIBITED = 1  # SSH_OPEN_ADMINISTRATIVELY_PROHIBITED


def _streamlocal_forward(conn, path):
    """Ask sshd to listen on a Unix socket for us (what `ssh -R /path:...` does)."""
    return conn.global_request("streamlocal-forward@openssh.com", (path,), wait=True)


def _unix_socket_channel_opens(conn, path):
    """Open a direct-streamlocal channel (`ssh -L port:/path/to/socket`) to a Unix socket on the host.

    paramiko has no call for it, so the three fields of the channel-open
    message (socket path, reserved string, reserved number) are added to the
    one message open_channel sends.
    """
    original = conn._send_user_message  # pylint: disable=protected-access

    def send_with_socket_path(message):
        message.add_string(path)
        message.add_string("")
        message.add_int(0)
        conn._send_user_message = original  # pylint: disable=protected-access
        return original(message)

    conn._send_user_message = send_with_socket_path  # pylint: disable=protected-access
    try:
        chan = conn.open_channel("direct-streamlocal@openssh.com", timeout=15)
    except paramiko.ChannelException:
        return False
    finally:
        conn._send_user_message = original  # pylint: disable=protected-access
    chan.close()
    return True


def _sshd_refused_socket(instance, path):
    """sshd logged that its policy refused the Unix socket (not that the socket was unreachable).

    sshd answers "connect failed" in both cases; its log tells them apart.
    """
    for _attempt in range(10):
        # Not "-u ssh.service": after login pam_systemd moves the session's
        # process (which logs this) into a session scope.
        log = instance.run("journalctl", "--since", "-3min", "--no-pager", "-q", check=False).stdout
        if any(path in line and ("refused streamlocal" in line or "request was denied" in line)
               for line in log.splitlines()):
            return True
        time.sleep(0.5)
    return False


def _tcp_channel_works(conn, port):
    """A direct-tcpip channel (`ssh -L`) to sshd's own port inside the container."""
    try:
        chan = conn.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 40000), timeout=15)
    except paramiko.ChannelException as exc:
        assert exc.code == PROHIBITED, exc
        return False
    try:
        chan.settimeout(15)
        return chan.recv(64).startswith(b"SSH-2.0-")
    finally:
        chan.close()


def test_no_forwarding_of_any_kind_by_default(instance, ephemeral_dir):
    conn = h.key_transport(instance.port(22), "keyuser", os.path.join(ephemeral_dir, "id_ed25519"))
    try:
        # Refused by sshd's policy (journald's socket takes connections from anybody).
        assert not _unix_socket_channel_opens(conn, JOURNAL_SOCKET)
        assert _sshd_refused_socket(instance, JOURNAL_SOCKET)
        sock = "/tmp/hm-fwd-%s.sock" % uuid.uuid4().hex[:8]
        assert _streamlocal_forward(conn, sock) is None
        assert not instance.host.file(sock).exists
        assert not _tcp_channel_works(conn, 22)
        with pytest.raises(paramiko.SSHException):
            conn.request_port_forward("127.0.0.1", 0)
    finally:
        conn.close()
    effective = instance.run("sshd", "-T", "-C", "user=keyuser,host=x,addr=192.0.2.1").stdout.splitlines()
    assert "disableforwarding yes" in effective
    assert "permittunnel no" in effective


@pytest.mark.key_and_totp
def test_tcp_opt_in_forwards_tcp_and_nothing_else(instance, ephemeral_dir):
    """side_effect.yml sets sshd_2fa_allow_tcp_forwarding: local."""
    conn = h.key_transport(instance.port(22), "root", os.path.join(ephemeral_dir, "hm_admin_key"))
    try:
        assert _tcp_channel_works(conn, 22)
        # Opting in to TCP used to open Unix sockets too (AllowStreamLocalForwarding
        # defaults to yes and shares TCP's permission); now it stays off.
        assert not _unix_socket_channel_opens(conn, JOURNAL_SOCKET)
        assert _sshd_refused_socket(instance, JOURNAL_SOCKET)
        sock = "/tmp/hm-fwd-%s.sock" % uuid.uuid4().hex[:8]
        assert _streamlocal_forward(conn, sock) is None
        with pytest.raises(paramiko.SSHException):
            conn.request_port_forward("127.0.0.1", 0)  # remote forwarding stays off
    finally:
        conn.close()
    effective = instance.run("sshd", "-T", "-C", "user=root,host=x,addr=192.0.2.1").stdout.splitlines()
    assert "disableforwarding no" in effective
    assert "allowtcpforwarding local" in effective
    assert "allowstreamlocalforwarding no" in effective


def test_sftp_after_code_and_password(instance):
    port = instance.port(22)
    code = h.totp(instance, "kim").now()
    conn, prompts, _notes = h.interactive(port, "kim", {"verification code": code, "password": h.password("kim")})
    assert conn is not None, prompts
    try:
        sftp = paramiko.SFTPClient.from_transport(conn)
        with sftp.open("sftp-proof.txt", "w") as handle:
            handle.write("written over sftp\n")
        assert "sftp-proof.txt" in sftp.listdir(".")
        sftp.close()
    finally:
        conn.close()
    assert instance.run("cat", "/home/kim/sftp-proof.txt").stdout == "written over sftp\n"


def test_sftp_with_the_password_alone_is_refused(instance):
    port = instance.port(22)
    conn, prompts, _notes = h.interactive(port, "lena", {"password": h.password("lena")})
    assert conn is None, "the password alone opened a session"
    assert any("verification code" in p.lower() for p in prompts), prompts
    plain = h.transport(port)
    try:
        with pytest.raises(paramiko.BadAuthenticationType):
            plain.auth_password("lena", h.password("lena"), fallback=False)
        assert not plain.is_authenticated()
    finally:
        plain.close()
