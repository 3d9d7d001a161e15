"""Run the module the way Ansible does (a separate Python reading its arguments file)."""

import json
import os

import pytest

import module_runner

from ansible_collections.hardened.mailhost.plugins.module_utils import _crypt, _userdb


def run_module(tmp_path, **args):
    return module_runner.run_module("userdb_pin", tmp_path, timeout=60, **args)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "sudo_pin")


def test_present_then_idempotent(tmp_path, db):
    first, _proc = run_module(tmp_path, db=db, user="alice", pin="482916", _ansible_diff=True)
    assert first["changed"] and first["action"] == "created"
    assert first["diff"]["after"] == "alice: PIN set (new)\n"
    assert first["invocation"]["module_args"]["pin"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert "482916" not in json.dumps(first)
    value = _userdb.UserDB(db).read()["alice"]
    assert value.startswith("$6$") and _crypt.verify("482916", value)
    second, _proc = run_module(tmp_path, db=db, user="alice", pin="482916")
    assert not second["changed"]


def test_policy_failure_is_clear_and_changes_nothing(tmp_path, db):
    result, proc = run_module(tmp_path, db=db, user="alice", pin="12a456")
    assert proc.returncode != 0 and result["failed"]
    assert "digits 0-9 only" in result["msg"]
    assert not os.path.exists(db + ".db")
    result, _proc = run_module(tmp_path, db=db, user="alice", pin="4829", min_length=6)
    assert result["failed"] and "too short" in result["msg"]
    result, _proc = run_module(tmp_path, db=db, user="alice", pin="alice99", digits_only=False)
    assert result["failed"] and "user name" in result["msg"]
    assert not os.path.exists(db + ".db")


def test_pin_and_generate_are_exclusive(tmp_path, db):
    result, _proc = run_module(tmp_path, db=db, user="alice", pin="482916", generate=True)
    assert result["failed"] and "either pin or generate" in result["msg"]
    assert not os.path.exists(db + ".db")
    ok, _proc = run_module(tmp_path, db=db, user="alice", pin="482916", generate=False)
    assert ok["changed"]


def test_generate_and_check_mode(tmp_path, db):
    checked, _proc = run_module(tmp_path, db=db, user="bob", generate=True, _ansible_check_mode=True)
    assert checked["changed"] and "pin" not in checked
    assert not os.path.exists(db + ".db")
    made, _proc = run_module(tmp_path, db=db, user="bob", generate=True, generate_length=10)
    assert made["changed"] and len(made["pin"]) == 10 and made["pin"].isdigit()
    assert _crypt.verify(made["pin"], _userdb.UserDB(db).read()["bob"])
    again, _proc = run_module(tmp_path, db=db, user="bob", generate=True)
    assert not again["changed"] and "pin" not in again


def test_absent(tmp_path, db):
    run_module(tmp_path, db=db, user="alice", pin="482916")
    removed, _proc = run_module(tmp_path, db=db, user="alice", state="absent")
    assert removed["changed"] and removed["action"] == "removed"
    assert _userdb.UserDB(db).read() == {}


def test_propose_returns_a_pin_and_stores_nothing(tmp_path, db):
    drawn, _proc = run_module(tmp_path, db=db, user="gina", generate=True, propose=True)
    assert not drawn["changed"] and drawn["action"] == "created"
    assert len(drawn["pin"]) == 8 and drawn["pin"].isdigit()
    assert not os.path.exists(db + ".db")
    stored, _proc = run_module(tmp_path, db=db, user="gina", pin=drawn["pin"])
    assert stored["changed"] and drawn["pin"] not in json.dumps(stored)
    again, _proc = run_module(tmp_path, db=db, user="gina", generate=True, propose=True)
    assert not again["changed"] and "pin" not in again
