"""The list form of hardened.mailhost.userdb_pin (``users:``): one lock, one read, one write.

The module runs for real as a script (module_runner) on a Berkeley DB file
in a temporary folder; the single-write property is checked in module_utils,
counting the writes of the real UserDB class.
"""

import json
import os

import pytest

import module_runner

from ansible_collections.hardened.mailhost.plugins.module_utils import _crypt, _userdb


def run_module(tmp_path, **args):
    return module_runner.run_module("userdb_pin", tmp_path, timeout=60, **args)[0]


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "sudo_pin")


def entries(db):
    return _userdb.UserDB(db).read()


def no_secret_outside_pins(result, pins):
    shown = json.dumps({k: v for k, v in result.items() if k != "pins"})
    return not any(pin in shown for pin in pins)


def test_every_entry_in_one_run_then_idempotent(tmp_path, db):
    users = [{"name": "alice", "pin": "482916"}, {"name": "bob", "generate": True},
             {"name": "carol", "pin": "739104"}, {"name": "dave", "state": "absent"}]
    first = run_module(tmp_path, db=db, users=users, _ansible_diff=True)
    assert first["changed"] is True
    assert [(u["name"], u["action"], u["changed"]) for u in first["users"]] == [
        ("alice", "created", True), ("bob", "created", True), ("carol", "created", True),
        ("dave", "none", False)]
    assert list(first["pins"]) == ["bob"] and len(first["pins"]["bob"]) == 8
    stored = entries(db)
    assert sorted(stored) == ["alice", "bob", "carol"]
    assert _crypt.verify("482916", stored["alice"]) and _crypt.verify(first["pins"]["bob"], stored["bob"])
    assert first["diff"]["after"] == ("alice: PIN set (new)\nbob: PIN set (new)\n"
                                      "carol: PIN set (new)\ndave: no PIN\n")
    # The vault PINs are masked in the invocation; no PIN or hash outside "pins".
    assert no_secret_outside_pins(first, ["482916", "739104", first["pins"]["bob"]])
    assert not any(value in json.dumps(first) for value in stored.values())
    inode = os.stat(db + ".db").st_ino

    again = run_module(tmp_path, db=db, users=users)
    assert again["changed"] is False and again["pins"] == {}
    assert not any(u["changed"] for u in again["users"])
    assert os.stat(db + ".db").st_ino == inode


def test_one_bad_entry_fails_naming_its_user_and_changes_nothing(tmp_path, db):
    run_module(tmp_path, db=db, users=[{"name": "alice", "pin": "482916"}])
    before = os.stat(db + ".db")
    result = run_module(tmp_path, db=db, users=[
        {"name": "alice", "pin": "590317"}, {"name": "bob", "pin": "12a456"},
        {"name": "carol", "state": "absent", "generate": True}, {"name": "erin", "generate": True}])
    assert result["failed"] and "nothing was changed for any user" in result["msg"]
    assert "bob must consist of the digits 0-9 only" in result["msg"]
    assert "carol: state=absent takes neither pin nor generate" in result["msg"]
    assert "alice" not in result["msg"] and "erin" not in result["msg"]
    assert "12a456" not in json.dumps(result) and "590317" not in json.dumps(result)
    after = os.stat(db + ".db")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _crypt.verify("482916", entries(db)["alice"]) and sorted(entries(db)) == ["alice"]
    twice = run_module(tmp_path, db=db, users=[
        {"name": "bob", "pin": "590317"}, {"name": "bob", "state": "absent"}])
    assert twice["failed"] and "bob is listed twice" in twice["msg"]
    assert sorted(entries(db)) == ["alice"]


def test_check_mode_and_diff_write_and_draw_nothing(tmp_path, db):
    run_module(tmp_path, db=db, users=[{"name": "alice", "pin": "482916"}])
    before = os.stat(db + ".db")
    planned = run_module(tmp_path, db=db, _ansible_check_mode=True, _ansible_diff=True, users=[
        {"name": "alice", "state": "absent"}, {"name": "bob", "generate": True},
        {"name": "carol", "pin": "739104"}])
    assert planned["changed"] is True and planned["pins"] == {}
    assert [u["action"] for u in planned["users"]] == ["removed", "created", "created"]
    assert planned["diff"]["before"] == "alice: PIN set\nbob: no PIN\ncarol: no PIN\n"
    assert planned["diff"]["after"] == "alice: no PIN\nbob: PIN set (new)\ncarol: PIN set (new)\n"
    after = os.stat(db + ".db")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(entries(db)) == ["alice"]


def test_propose_draws_for_the_list_and_stores_nothing(tmp_path, db):
    run_module(tmp_path, db=db, users=[{"name": "alice", "pin": "482916"}])
    drawn = run_module(tmp_path, db=db, propose=True, users=[
        {"name": "alice", "generate": True}, {"name": "gina", "generate": True},
        {"name": "hank", "generate": True}])
    assert drawn["changed"] is False and sorted(drawn["pins"]) == ["gina", "hank"]
    assert [u["action"] for u in drawn["users"]] == ["none", "created", "created"]
    assert sorted(entries(db)) == ["alice"]
    stored = run_module(tmp_path, db=db, users=[{"name": n, "pin": p} for n, p in drawn["pins"].items()])
    assert stored["changed"] and no_secret_outside_pins(stored, drawn["pins"].values())
    assert all(_crypt.verify(p, entries(db)[n]) for n, p in drawn["pins"].items())
    refused = run_module(tmp_path, db=db, propose=True, users=[{"name": "ivan", "pin": "590317"}])
    assert refused["failed"] and "ivan: propose only applies" in refused["msg"]


def test_rotate_in_the_list_replaces_only_that_entry(tmp_path, db):
    first = run_module(tmp_path, db=db, users=[
        {"name": "bob", "generate": True}, {"name": "carol", "generate": True}])
    rotated = run_module(tmp_path, db=db, users=[
        {"name": "bob", "generate": True, "rotate": True}, {"name": "carol", "generate": True}])
    assert [u["action"] for u in rotated["users"]] == ["updated", "none"]
    assert list(rotated["pins"]) == ["bob"] and rotated["pins"]["bob"] != first["pins"]["bob"]
    assert _crypt.verify(first["pins"]["carol"], entries(db)["carol"])


@pytest.mark.parametrize("args,message", [
    ({"user": "alice", "users": []}, "mutually exclusive: user|users"),
    ({"users": [], "pin": "482916"}, "mutually exclusive: users|pin"),
    ({"users": [], "generate": True}, "mutually exclusive: users|generate"),
    ({}, "one of the following is required: user, users"),
    ({"users": [{"pin": "482916"}]}, "missing required arguments: name"),
])
def test_list_and_single_forms_are_exclusive(tmp_path, db, args, message):
    result = run_module(tmp_path, db=db, **args)
    assert result["failed"] and message in result["msg"]
    assert "482916" not in json.dumps(result)
    assert not os.path.exists(db + ".db")


def test_an_empty_list_changes_nothing(tmp_path, db):
    result = run_module(tmp_path, db=db, users=[])
    assert result["changed"] is False and result["users"] == [] and not os.path.exists(db + ".db")


def test_one_read_and_one_write_for_the_whole_list(db, monkeypatch):
    calls = {"read": 0, "write": 0}
    real_read, real_write = _userdb.UserDB.read, _userdb.UserDB.write

    def counting_read(self):
        calls["read"] += 1
        return real_read(self)

    def counting_write(self, data):
        calls["write"] += 1
        return real_write(self, data)

    monkeypatch.setattr(_userdb.UserDB, "read", counting_read)
    monkeypatch.setattr(_userdb.UserDB, "write", counting_write)
    users = [{"name": "user%03d" % n, "pin": "%06d" % (482916 + 7 * n)} for n in range(100)]
    result = _userdb.ensure_pins(db, users)
    assert result["changed"] and len(result["users"]) == 100
    assert calls == {"read": 1, "write": 1}
    assert len(_userdb.UserDB(db).read()) == 100
