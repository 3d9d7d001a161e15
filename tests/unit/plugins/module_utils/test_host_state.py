"""host_state_info: installed packages and services, parsed and run as Ansible runs it."""

import os
import stat

from module_runner import run_module

from ansible_collections.hardened.mailhost.plugins.module_utils import _host_state

DPKG = (
    "ii  openssh-server\n"
    "ii  libpam-modules\n"   # ${Package} has no architecture suffix
    "rc  exim4-base\n"       # removed, configuration files left
    "iU  postfix\n"          # unpacked, not configured
    "hi  sudo\n"             # on hold, installed
    "ii  ca-certificates\n"
)
SYSTEMCTL = (
    "Id=ssh.service\nActiveState=active\nUnitFileState=enabled\n\n"
    "Id=postfix.service\nActiveState=active\nUnitFileState=enabled\n\n"
    "Id=postfix@-.service\nActiveState=active\nUnitFileState=static\n\n"
    "Id=dovecot.service\nActiveState=failed\nUnitFileState=enabled\n\n"
    "Id=fail2ban.service\nActiveState=inactive\nUnitFileState=disabled\n"
)


def test_only_installed_packages_count():
    assert _host_state.installed_packages(DPKG) == ["ca-certificates", "libpam-modules", "openssh-server", "sudo"]
    assert _host_state.installed_packages("") == []


def test_active_and_enabled_are_told_apart():
    active, enabled = _host_state.services(SYSTEMCTL)
    assert active == ["postfix.service", "postfix@-.service", "ssh.service"]
    assert enabled == ["dovecot.service", "postfix.service", "ssh.service"]
    assert _host_state.services("") == ([], [])


def _fake_bin(tmp_path, name, text, rc=0):
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\ncat <<'EOF'\n%sEOF\nexit %d\n" % (text, rc))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path.parent)


def test_module_reads_both_in_one_run(tmp_path, monkeypatch):
    _fake_bin(tmp_path, "dpkg-query", DPKG)
    bindir = _fake_bin(tmp_path, "systemctl", SYSTEMCTL)
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ["PATH"])
    result, _proc = run_module("host_state_info", tmp_path, check=True)
    assert result["changed"] is False and result["systemd"] is True
    assert "openssh-server" in result["packages"] and "postfix" not in result["packages"]
    assert result["active_services"] == ["postfix.service", "postfix@-.service", "ssh.service"]
    assert "dovecot.service" not in result["active_services"]


def test_a_failing_systemctl_leaves_the_service_lists_empty(tmp_path, monkeypatch):
    _fake_bin(tmp_path, "dpkg-query", DPKG)
    bindir = _fake_bin(tmp_path, "systemctl", "System has not been booted with systemd\n", rc=1)
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ["PATH"])
    result, _proc = run_module("host_state_info", tmp_path)
    assert result["systemd"] is False
    assert result["active_services"] == result["enabled_services"] == []
    # ansible-core 2.19 returns warnings as structured summaries, older ones as strings.
    assert "systemctl show failed" in str(result.get("warnings"))


def test_a_failing_dpkg_query_is_an_error(tmp_path, monkeypatch):
    bindir = _fake_bin(tmp_path, "dpkg-query", "", rc=2)
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ["PATH"])
    result, _proc = run_module("host_state_info", tmp_path)
    assert result["failed"] and "dpkg-query failed" in result["msg"]
