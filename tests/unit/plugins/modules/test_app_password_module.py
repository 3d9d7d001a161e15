"""Run the app_password module as Ansible runs it: a script reading its arguments."""

import grp
import json
import os
import pwd

import pytest

import module_runner

MODULE = "app_password"
INFO_MODULE = "app_password_info"
ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def run(tmp_path, module=MODULE, **args):
    args.setdefault("passwd_file", str(tmp_path / "app-passwords"))
    if module == MODULE:
        args.setdefault("group", MY_GROUP)
    return module_runner.run_module(module, tmp_path, **args)[0]


@pytest.fixture(autouse=True)
def _root_only():
    if os.getuid() != 0:
        pytest.skip("the module writes the file as root")


def test_present_then_idempotent_then_absent(tmp_path):
    first = run(tmp_path, user=ME, device="phone")
    assert first["changed"] is True
    assert first["login"] == ME + "+phone"
    assert len(first["password"]) == 23
    assert first["entries"] == [{"user": ME, "device": "phone", "login": ME + "+phone"}]
    again = run(tmp_path, user=ME, device="phone")
    assert again["changed"] is False and again["password"] is None
    run(tmp_path, user=ME, device="laptop")
    listed = run(tmp_path, module=INFO_MODULE, user=ME)
    assert listed["changed"] is False
    assert [e["login"] for e in listed["entries"]] == [ME + "+laptop", ME + "+phone"]
    assert "password" not in json.dumps(listed["entries"]) and "$6$" not in json.dumps(listed)
    assert [e["device"] for e in run(tmp_path, module=INFO_MODULE, device="phone")["entries"]] == ["phone"]
    gone = run(tmp_path, user=ME, device="phone", state="absent")
    assert gone["changed"] is True and [e["device"] for e in gone["entries"]] == ["laptop"]
    assert run(tmp_path, user=ME, device="phone", state="absent")["changed"] is False


def test_check_mode_and_diff_never_show_secrets(tmp_path):
    planned = run(tmp_path, user=ME, device="phone", _ansible_check_mode=True, _ansible_diff=True)
    assert planned["changed"] is True and planned["password"] is None
    assert planned["diff"]["after"] == ME + "+phone\n"
    assert not (tmp_path / "app-passwords").exists()
    made = run(tmp_path, user=ME, device="phone", _ansible_diff=True)
    text = (tmp_path / "app-passwords").read_text()
    hashed = text.strip().splitlines()[-1].split(":")[1]
    blob = json.dumps(made["diff"])
    assert made["password"] not in blob and hashed not in blob
    assert made["diff"] == {"before": "", "after": ME + "+phone\n",
                            "before_header": str(tmp_path / "app-passwords"),
                            "after_header": str(tmp_path / "app-passwords")}


def test_bad_input_fails_clearly(tmp_path):
    bad = run(tmp_path, user=ME, device="My Phone")
    assert bad["failed"] is True and "invalid device label" in bad["msg"]
    missing = run(tmp_path, user=ME)
    assert missing["failed"] is True and "device" in missing["msg"]
    ghost = run(tmp_path, user="nosuchuser-hm", device="phone")
    assert ghost["failed"] is True and "does not exist on this host" in ghost["msg"]
    assert not (tmp_path / "app-passwords").exists()


def test_password_option_is_not_accepted(tmp_path):
    result = run(tmp_path, user=ME, device="phone", password="chosen-by-me")
    assert result["failed"] is True and "password" in result["msg"]


def test_info_on_a_missing_file_and_bad_filters(tmp_path):
    assert run(tmp_path, module=INFO_MODULE)["entries"] == []
    bad = run(tmp_path, module=INFO_MODULE, device="Not Valid")
    assert bad["failed"] is True and "invalid device label" in bad["msg"]
