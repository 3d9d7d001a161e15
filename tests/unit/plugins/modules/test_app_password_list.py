"""The list form of hardened.mailhost.app_password (``devices:``): one lock, one read, one write."""

import grp
import json
import os
import pwd

import pytest

import module_runner

from ansible_collections.hardened.mailhost.plugins.module_utils import _app_password

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def run(tmp_path, **args):
    args.setdefault("passwd_file", str(tmp_path / "app-passwords"))
    args.setdefault("group", MY_GROUP)
    return module_runner.run_module("app_password", tmp_path, **args)[0]


@pytest.fixture(autouse=True)
def _root_only():
    if os.getuid() != 0:
        pytest.skip("the module writes the file as root")


def hashes(tmp_path):
    text = (tmp_path / "app-passwords").read_text()
    return [line.split(":")[1] for line in text.splitlines() if line and not line.startswith("#")]


def test_every_device_in_one_run_then_idempotent(tmp_path):
    devices = [{"user": ME, "device": "phone"}, {"user": ME, "device": "laptop"},
               {"user": ME, "device": "tablet", "state": "absent"}]
    first = run(tmp_path, devices=devices, _ansible_diff=True)
    assert first["changed"] is True
    assert [(d["login"], d["state"], d["changed"]) for d in first["devices"]] == [
        (ME + "+phone", "present", True), (ME + "+laptop", "present", True),
        (ME + "+tablet", "absent", False)]
    assert sorted(first["passwords"]) == [ME + "+laptop", ME + "+phone"]
    assert first["diff"]["before"] == "" and first["diff"]["after"] == "%s+laptop\n%s+phone\n" % (ME, ME)
    shown = json.dumps({k: v for k, v in first.items() if k != "passwords"})
    assert not any(p in shown for p in first["passwords"].values())
    assert not any(h in json.dumps(first) for h in hashes(tmp_path))
    for login, password in first["passwords"].items():
        user, device = login.split("+")
        stored = [e for e in _app_password.AppPasswordFile(str(tmp_path / "app-passwords")).read()
                  if e.login == login]
        assert stored and _app_password.verify_password(password, stored[0].hashed)
    mtime = os.stat(tmp_path / "app-passwords").st_mtime_ns

    again = run(tmp_path, devices=devices)
    assert again["changed"] is False and again["passwords"] == {}
    assert os.stat(tmp_path / "app-passwords").st_mtime_ns == mtime


def test_one_bad_device_fails_naming_it_and_changes_nothing(tmp_path):
    run(tmp_path, devices=[{"user": ME, "device": "phone"}])
    before = (tmp_path / "app-passwords").read_bytes()
    result = run(tmp_path, devices=[{"user": ME, "device": "laptop"},
                                    {"user": "nosuchuser-hm", "device": "phone"},
                                    {"user": ME, "device": "My Tablet"}])
    assert result["failed"] and "nothing was changed for any device" in result["msg"]
    assert "'nosuchuser-hm' does not exist" in result["msg"] and "'My Tablet'" in result["msg"]
    assert (tmp_path / "app-passwords").read_bytes() == before
    twice = run(tmp_path, devices=[{"user": ME, "device": "laptop"},
                                   {"user": ME, "device": "laptop", "state": "absent"}])
    assert twice["failed"] and "%s+laptop is listed twice" % ME in twice["msg"]
    assert (tmp_path / "app-passwords").read_bytes() == before


def test_check_mode_and_diff_write_and_make_nothing(tmp_path):
    run(tmp_path, devices=[{"user": ME, "device": "phone"}])
    before = (tmp_path / "app-passwords").read_bytes()
    planned = run(tmp_path, _ansible_check_mode=True, _ansible_diff=True, devices=[
        {"user": ME, "device": "phone", "state": "absent"}, {"user": ME, "device": "laptop"}])
    assert planned["changed"] is True and planned["passwords"] == {}
    assert [d["changed"] for d in planned["devices"]] == [True, True]
    assert planned["diff"]["before"] == ME + "+phone\n" and planned["diff"]["after"] == ME + "+laptop\n"
    assert (tmp_path / "app-passwords").read_bytes() == before


def test_regenerate_replaces_only_that_device(tmp_path):
    first = run(tmp_path, devices=[{"user": ME, "device": "phone"}, {"user": ME, "device": "laptop"}])
    again = run(tmp_path, devices=[{"user": ME, "device": "phone", "regenerate": True},
                                   {"user": ME, "device": "laptop"}])
    assert [d["changed"] for d in again["devices"]] == [True, False]
    assert list(again["passwords"]) == [ME + "+phone"]
    assert again["passwords"][ME + "+phone"] != first["passwords"][ME + "+phone"]


@pytest.mark.parametrize("args,message", [
    ({"devices": [], "user": ME, "device": "phone"}, "mutually exclusive: devices|user"),
    ({"devices": [], "state": "absent"}, "mutually exclusive: devices|state"),
    ({}, "one of the following is required: devices, user"),
    ({"devices": [{"user": ME}]}, "missing required arguments: device"),
])
def test_list_and_single_forms_are_exclusive(tmp_path, args, message):
    result = run(tmp_path, **args)
    assert result["failed"] and message in result["msg"]
    assert not (tmp_path / "app-passwords").exists()


def test_an_empty_list_changes_nothing(tmp_path):
    result = run(tmp_path, devices=[])
    assert result["changed"] is False and result["devices"] == [] and result["passwords"] == {}
    assert not (tmp_path / "app-passwords").exists()


def test_one_read_and_one_write_for_the_whole_list(tmp_path, monkeypatch):
    calls = {"read": 0, "write": 0}
    real_read, real_write = _app_password.AppPasswordFile.read, _app_password.AppPasswordFile._write

    def counting_read(self):
        calls["read"] += 1
        return real_read(self)

    def counting_write(self, entries):
        calls["write"] += 1
        return real_write(self, entries)

    monkeypatch.setattr(_app_password.AppPasswordFile, "read", counting_read)
    monkeypatch.setattr(_app_password.AppPasswordFile, "_write", counting_write)
    store = _app_password.AppPasswordFile(str(tmp_path / "app-passwords"), group=MY_GROUP)
    devices, passwords, entries = store.apply([{"user": ME, "device": "d%03d" % n} for n in range(100)])
    assert len(devices) == 100 and len(passwords) == 100 and len(entries) == 100
    assert calls == {"read": 1, "write": 1}
    assert len(store.read()) == 100
